"""The heads commands, a module per group; ``heads.cli`` builds the parser from them and runs one."""
