"""moto's S3 server on loopback, started and stopped for real (`moto_server` as a process).

The server checks credentials (moto's IAM authentication is switched on once a user with
an access key exists), so a wrong key is refused as AWS refuses it. Clients find it the way
users point at any S3-compatible store: AWS_ENDPOINT_URL and the AWS_* key variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REGION = "us-east-1"
ADMIN_POLICY = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    process: subprocess.Popen = field(repr=False)

    def env(self, **extra: str) -> dict[str, str]:
        """The variables a client (this process or a subprocess) needs to reach it."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true", **extra}

    def client(self):  # noqa: ANN201 - a boto3 client (typed stubs not installed)
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(endpoint: str, proc: subprocess.Popen, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s  # a bound on start-up, not a race
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not answer within a minute") from None
            time.sleep(0.1)


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Server]:
    """A fresh moto S3 server on a free loopback port, with authentication on; stopped (and
    waited for) on the way out, also on failure."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("moto_server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(endpoint, proc)
        # before authentication is on: a user allowed everything, and its key
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="tests")
        iam.put_user_policy(UserName="tests", PolicyName="all",
                            PolicyDocument=json.dumps(ADMIN_POLICY))
        key = iam.create_access_key(UserName="tests")["AccessKey"]
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10):
            pass
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
