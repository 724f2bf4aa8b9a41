"""Preparing a TFDS dataset on first use: TFDS's own download-and-prepare into ArrayRecord.

Before TFDS starts (its downloader retries for minutes on a dead network), the hosts it downloads
from are probed with short TCP connections, so an offline machine stops within seconds with the
manual steps instead of hanging.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import socket
import urllib.parse

from msjax.errors import DataError

TFDS_EXTRA = "pip install 'msjax[tfds]'"
PROBE_SECONDS = 4.0  # per host, all hosts at once: the offline verdict comes within this
# TFDS's mirror of many datasets; probed beside a builder's own hosts when it lists none.
TFDS_MIRROR = ("storage.googleapis.com", 443)


def manual_steps(name: str, data_dir: str) -> str:
    return (f"prepare it once on a machine with network access: {TFDS_EXTRA}; "
            f"tfds build {name} --file_format=array_record --data_dir={data_dir}; "
            f"then copy {data_dir}/{name} here (or point --config.data.data_dir at it)")


def download_hosts(builder) -> list[tuple[str, int]]:
    """(host, port) of every URL the builder downloads (from its checksums file); for a catalog
    builder that lists none, TFDS's mirror and the dataset's homepage; for a builder of one's
    own that lists none, nothing (it may need no network)."""
    urls = list(getattr(type(builder), "url_infos", None) or {})
    if not urls and _is_catalog(builder):
        urls = ["https://" + TFDS_MIRROR[0]] + ([builder.info.homepage]
                                                 if builder.info.homepage else [])
    hosts = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            hosts.append((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    return sorted(set(hosts))


def _proxy() -> tuple[str, int] | None:
    """An HTTP(S) proxy from the environment: then only the proxy needs to be reachable."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        if os.environ.get(var):
            parts = urllib.parse.urlsplit(os.environ[var])
            if parts.hostname:
                return parts.hostname, parts.port or 80
    return None


def unreachable_hosts(hosts, timeout: float = PROBE_SECONDS) -> list[str]:
    """The hosts (host, port) that a TCP connection cannot reach within ``timeout`` seconds."""
    proxy = _proxy()
    if proxy is not None:
        hosts = [proxy]

    def reachable(address):
        try:
            with socket.create_connection(address, timeout=timeout):
                return True
        except OSError:
            return False

    if not hosts:
        return []
    # The name lookup is not bounded by the socket timeout: a probe still running after it
    # counts as unreachable, and its thread is left to finish on its own.
    pool = concurrent.futures.ThreadPoolExecutor(len(hosts))
    futures = [pool.submit(reachable, h) for h in hosts]
    concurrent.futures.wait(futures, timeout=timeout + 1.0)
    pool.shutdown(wait=False)
    return [f"{h}:{p}" for (h, p), f in zip(hosts, futures)
            if not (f.done() and f.result())]


def _is_catalog(builder) -> bool:
    return type(builder).__module__.startswith("tensorflow_datasets.")


def _needs_tensorflow(builder) -> bool:
    """TFDS's catalog builders encode images with TensorFlow while preparing; a builder of one's
    own that yields encoded images does not."""
    return _is_catalog(builder)


def prepare(name: str, data_dir: str, *, report=print) -> None:
    """Downloads and prepares TFDS dataset ``name`` as ArrayRecord under ``data_dir`` (TFDS's
    own progress bars), or raises DataError naming what is missing and the manual steps."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(f"TFDS has no dataset {name!r} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]}); check --config.data.name") from None
    if _needs_tensorflow(builder) and importlib.util.find_spec("tensorflow") is None:
        raise DataError(f"TFDS dataset {name!r} is not prepared under {data_dir}, and preparing "
                        f"it needs TensorFlow: {TFDS_EXTRA} and run again, or "
                        + manual_steps(name, data_dir))
    down = unreachable_hosts(download_hosts(builder))
    if down:
        raise DataError(f"TFDS dataset {name!r} is not prepared under {data_dir}, and this "
                        f"machine cannot reach {', '.join(down)} to download it: "
                        + manual_steps(name, data_dir)
                        + ", or set --config.data.download=False to stop without probing")
    report(f"preparing TFDS dataset {name!r} as ArrayRecord in {data_dir} (once; TFDS downloads "
           "and converts it)")
    try:
        builder.download_and_prepare(file_format="array_record")
    except ModuleNotFoundError as e:
        raise DataError(f"preparing TFDS dataset {name!r} needs {e.name}: {TFDS_EXTRA} and run "
                        "again (downloads already made are kept), or "
                        + manual_steps(name, data_dir)) from None
    except Exception as e:
        raise DataError(f"preparing TFDS dataset {name!r} failed ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); run again to resume, or "
                        + manual_steps(name, data_dir)) from None
