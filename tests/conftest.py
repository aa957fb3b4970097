"""Shared pytest fixtures."""

import os
import uuid
from collections.abc import Iterator

import pytest

# --- S3 (moto server) and Dask (LocalCluster) fixtures ---------------------------------------------
# Set before any worker process starts so that no test, and no worker, can ever reach real AWS.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    AWS_CONFIG_FILE=os.devnull,
    AWS_SHARED_CREDENTIALS_FILE=os.devnull,
)
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict]:
    """A real moto S3 server on a free local port, shared by the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    yield {
        "endpoint_url": endpoint_url,
        "storage_options": {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint_url, "region_name": "us-east-1"},
        },
    }
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: dict) -> str:
    """A freshly created, empty bucket name on the session's moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server["endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def dask_client() -> Iterator:
    """A real two-process LocalCluster client, shared by the whole session."""
    from distributed import Client, LocalCluster
    from samples import SECRET

    # Workers hold the tests' secret in their own environment, as a deployment gives it to them.
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                     env={"DICOM_DEID_SECRET": SECRET.decode()}) as cluster,
        Client(cluster) as client,
    ):
        yield client


# --- end of S3 and Dask fixtures ---------------------------------------------------------------------
