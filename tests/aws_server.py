"""Session fixture: a real moto AWS-API server process on a free loopback port.

``aws_endpoint`` starts ``python -m moto.server`` in a temporary folder, switches its Lambda
backend to the one that stores functions without Docker (xflow's own ``emulate`` runs the code),
and points boto3 in this process and in the processes it starts at it through
``AWS_ENDPOINT_URL``, dummy credentials and a region. The server is stopped at the end.

Use it from a test module with ``from aws_server import aws_endpoint  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

REGION = "us-east-1"
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}

#: ``python -m moto.server``, with two fixes (the second is below): a published Lambda version is a copy that loses
#: the Docker client attribute (LambdaFunction.__getstate__ drops it), so a Kinesis put to a stream mapped to a version
#: or an alias crashed the server (500) instead of failing the Docker-less invocation as it does for $LATEST
MOTO_MAIN = """
import moto.awslambda.models as lambda_models

def _setstate(self, state):
    self.__dict__.update(state)
    self.__dict__.setdefault("_DockerModel__docker_client", None)

lambda_models.LambdaFunction.__setstate__ = _setstate

# and a second: without Docker, layer versions are published to the Docker-less backend but a function's Layers were
# looked up in the Docker one, so every function naming a layer was refused (ResourceNotFoundException)
from moto.awslambda.utils import get_backend

def _layers_data(self, arns):
    found = [get_backend(self.account_id, self.region).layers_versions_by_arn(arn) for arn in arns]
    if not all(found):
        raise lambda_models.UnknownLayerVersionException(arns)
    return [{"Arn": version.arn, "CodeSize": version.code_size} for version in found]

lambda_models.LambdaFunction._get_layers_data = _layers_data
from moto.server import main
main()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(folder: str, port: int = 0) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto server (on ``port``, else a free one); return the process and its endpoint URL once it answers."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (source .ci/install-aws.sh)")
    port = port or _free_port()
    log = open(os.path.join(folder, "moto.log"), "wb")  # noqa: SIM115 - lives as long as the server
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(ENV)
    proc = subprocess.Popen([sys.executable, "-c", MOTO_MAIN, "-H", "127.0.0.1", "-p", str(port)],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}; see {folder}/moto.log")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not answer on {url}; see {folder}/moto.log") from None
            time.sleep(0.2)
    request = urllib.request.Request(url + "/moto-api/config", method="POST",
                                     data=json.dumps({"lambda": {"use_docker": False}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5):
        pass
    return proc, url


def stop_moto(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def aws_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto server; AWS_* variables point at it for the whole session."""
    folder = tmp_path_factory.mktemp("moto")
    proc, url = start_moto(str(folder))
    saved = {k: os.environ.get(k) for k in [*ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    os.environ.update(ENV)
    os.environ["AWS_ENDPOINT_URL"] = url
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_moto(proc)


if __name__ == "__main__":
    # python tests/aws_server.py [PORT]: the server the tests use, for a deployment by hand (README); Ctrl-C stops it
    import signal
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill %1` stops the server too
    with tempfile.TemporaryDirectory(prefix="xflow-moto-") as folder:
        server, endpoint = start_moto(folder, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
        print(f"export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x "
              f"AWS_DEFAULT_REGION={REGION}", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_moto(server)
