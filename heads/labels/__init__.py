"""Where labels come from: ``labeling`` (labeling functions), ``pseudolabel`` (``heads pseudolabel``),
``selftrain`` (self-training with a committee), ``annotate`` (judges that rate texts), ``selection``
(``heads select``: what to label next)."""
