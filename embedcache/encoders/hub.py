"""Models by hub id: from the local Hugging Face cache, or the hub when it answers; never minutes of retries."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import EncoderError


def hub_snapshot(name: str, offline_choices: list[str]) -> str:
    """Where to load a hub id from: its snapshot in the local Hugging Face cache, else the id itself when
    the hub can be reached; an EncoderError at once otherwise (instead of minutes of retries, then a traceback)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in (".json", ".safetensors"):
        raise EncoderError(f"model {name}: no such directory (a local model is a sentence-transformers directory)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- not cached (the hub client raises several types), or not a valid id
        logging.getLogger("embedcache.encoders").debug("%s is not in the Hugging Face cache: %s", name, e)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not hub_reachable():
        raise EncoderError(
            f"model {name!r} is not a local directory nor in the Hugging Face cache, and the hub "
            f"{'is switched off (HF_HUB_OFFLINE)' if offline else 'cannot be reached (no network)'}; use an offline "
            f"encoder ({', '.join(offline_choices)}) or a local sentence-transformers directory: download the model "
            "where there is network and copy its directory here"
        )
    return name


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within ``timeout`` seconds (name lookup included)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # a name lookup ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
