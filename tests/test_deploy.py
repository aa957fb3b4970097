"""deploy/ checked without a cluster: each file by its platform's validator, the scripts by running them."""

from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
KUBE = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"
SHELL_SCRIPTS = [ENTRYPOINT, SLURM / "shard.sbatch", SLURM / "finalize.sbatch", SLURM / "submit.sh"]
# Oldest Kubernetes the manifests are meant for (backoffLimitPerIndex is on by default from 1.29), and newest.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
SECRET_NAME, SECRET_ENV, ACCOUNT = "dicom-deid-secret", "DICOM_DEID_SECRET_FILE", "dicom-deid"


def _missing(what: str) -> None:
    """Skip where a validator is not installed; in CI, which installs the test extra, that is a failure."""
    message = f"{what} is not installed (pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _tool(name: str) -> str:
    """A validator's executable from this environment."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        _missing(name)
    return found


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(name)


def _run(*command: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifests() -> dict[str, dict]:
    """Every Kubernetes object in deploy/kubernetes, by file name (one object per file)."""
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        docs = _documents(path)
        if docs and "apiVersion" in docs[0]:
            assert len(docs) == 1, path
            found[path.name] = docs[0]
    return found


def _image_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    return int(users[-1].split(":")[0])


# --- Docker ------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_and_a_root_image_does_not(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    ours = _run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert ours.returncode == 0, ours.stdout + ours.stderr
    as_root = tmp_path / "Dockerfile"
    as_root.write_text(re.sub(r"^USER .*$", "USER root", DOCKERFILE.read_text(), flags=re.M))
    control = _run(hadolint, "--no-color", str(as_root))
    assert control.returncode != 0 and "DL3002" in control.stdout


def test_image_is_pinned_non_root_and_starts_through_the_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base) for base in bases), bases
    assert _image_uid() >= 1000
    assert 'ENTRYPOINT ["dicom-deid-entrypoint"]' in text


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, glob[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(candidate, glob) for candidate in candidates)
        if hit:
            ignored = not keep
    return ignored


def test_dockerignore_sends_what_the_image_copies_and_nothing_private() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), re.M):
        words = [word for word in line.split() if not word.startswith("--")]
        if "--from=" not in line:
            copied += words[:-1]
    assert copied
    for source in copied:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        assert files and not any(_dockerignored(f, patterns) for f in files), source
    for private in ("tests/conftest.py", "benchmarks/engine.py", ".git/config", "dicom-deid-output/x.dcm",
                    "pipeline/__pycache__/cli.cpython-311.pyc", ".ci/run"):
        assert _dockerignored(private, patterns), private


def test_entrypoint_serves_driver_scheduler_and_worker_roles() -> None:
    """The Helm chart starts `dask-scheduler`/`dask-worker`, the operator `dask worker`, jobs `run ...`."""
    run = _run("sh", str(ENTRYPOINT), "run", "--help")
    assert run.returncode == 0 and "--tables" in run.stdout, run.stderr
    worker = _run("sh", str(ENTRYPOINT), "dask-worker", "--help")
    assert worker.returncode == 0 and "dask worker" in worker.stdout, worker.stderr
    other = _run("sh", str(ENTRYPOINT), "python", "-c", "print('direct')")
    assert other.stdout.strip() == "direct"


# --- YAML and shell ----------------------------------------------------------------------------------


def test_all_yaml_passes_yamllint_strictly() -> None:
    config = str(DEPLOY / ".yamllint.yaml")
    result = _run(_tool("yamllint"), "-s", "-f", "parsable", "-c", config, str(DEPLOY))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(DEPLOY.rglob("*.yaml"))) >= 7


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_executable(script: Path) -> None:
    shell = "sh" if script.read_text().startswith("#!/bin/sh") else "bash"
    assert _run(shell, "-n", str(script)).returncode == 0
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script: Path) -> None:
    result = _run(_tool("shellcheck"), str(script))
    assert result.returncode == 0, result.stdout


# --- Kubernetes ----------------------------------------------------------------------------------------


def _core() -> dict[str, dict]:
    return {name: doc for name, doc in _manifests().items() if "kubernetes.dask.org" not in doc["apiVersion"]}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_core_manifests_pass_strict_kubernetes_validation(version: str) -> None:
    kubernetes_validate = _module("kubernetes_validate")
    core = _core()
    assert {doc["kind"] for doc in core.values()} >= {"Job", "ServiceAccount", "Secret"}
    for name, doc in core.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message}")
    typo = copy.deepcopy(core["shards-job.yaml"])
    typo["spec"]["template"]["spec"]["containers"][0]["secretFile"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


def _strict(schema: object) -> object:
    """The CRD schema as the API server applies it with strict field validation: unknown fields are errors."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _daskjob_crd() -> dict:
    _module("dask_kubernetes")
    from importlib.resources import files

    crds = files("dask_kubernetes") / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
    return yaml.safe_load((crds / "daskjob.yaml").read_text())


def test_daskjob_matches_the_operators_crd_schema() -> None:
    jsonschema = _module("jsonschema")
    crd = _daskjob_crd()
    job = _documents(KUBE / "daskjob.yaml")[0]
    group, version = job["apiVersion"].split("/")
    assert (group, job["kind"]) == (crd["spec"]["group"], crd["spec"]["names"]["kind"])
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    schema = _strict(served[version]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(job["spec"])]
    assert not errors, errors
    typo = copy.deepcopy(job["spec"])
    typo["cluster"]["spec"]["worker"]["replica"] = typo["cluster"]["spec"]["worker"].pop("replicas")
    assert not validator.is_valid(typo)


def _chart_pod(values: dict, role: str) -> dict:
    """The pod the official Dask chart's templates make from these values (the fields they copy)."""
    part = values[role]
    image = part["image"]
    command = ([image["dask_worker"], "dicom-deid-dask-scheduler:8786"] if role == "worker"
               else ["dask-scheduler", "--port=8786"])
    container = {"name": role, "image": f"{image['repository']}:{image['tag']}", "args": command,
                 "imagePullPolicy": image["pullPolicy"]}
    for key in ("resources", "env"):
        if part.get(key):
            container[key] = part[key]
    mounts = part.get("mounts", {})
    if mounts.get("volumeMounts"):
        container["volumeMounts"] = mounts["volumeMounts"]
    spec = {"containers": [container]}
    for key in ("securityContext", "serviceAccountName"):
        if part.get(key):
            spec[key] = part[key]
    if mounts.get("volumes"):
        spec["volumes"] = mounts["volumes"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}, "spec": spec}


def _pod_specs() -> dict[str, dict]:
    """Every pod that runs dicom-deid or a Dask worker, by where it is defined."""
    found = {}
    for name, doc in _manifests().items():
        if doc["kind"] == "Job":
            found[name] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "DaskJob":
            found[f"{name} job"] = doc["spec"]["job"]["spec"]
            found[f"{name} worker"] = doc["spec"]["cluster"]["spec"]["worker"]["spec"]
    found["dask-helm-values.yaml worker"] = _chart_pod(_helm_values(), "worker")["spec"]
    return found


def _helm_values() -> dict:
    return _documents(KUBE / "dask-helm-values.yaml")[0]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_helm_values_make_valid_pods(version: str) -> None:
    kubernetes_validate = _module("kubernetes_validate")
    values = _helm_values()
    assert values["jupyter"]["enabled"] is False
    for role in ("scheduler", "worker"):
        kubernetes_validate.validate(_chart_pod(values, role), version, strict=True)


def test_pods_get_s3_from_their_service_account_and_the_secret_from_a_mounted_file() -> None:
    account = _manifests()["serviceaccount.yaml"]
    assert account["metadata"]["name"] == ACCOUNT
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    pods = _pod_specs()
    assert len(pods) >= 6
    for where, pod in pods.items():
        assert pod["serviceAccountName"] == ACCOUNT, where
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == _image_uid()
        volumes = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == SECRET_NAME}
        assert len(volumes) == 1, where
        for container in pod["containers"]:
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            mount = next(m for m in container["volumeMounts"] if m["name"] in volumes)
            assert mount["readOnly"] and env[SECRET_ENV].startswith(mount["mountPath"] + "/"), where
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DICOM_DEID_SECRET"} & set(env), where
    schedulers = [_documents(KUBE / "daskjob.yaml")[0]["spec"]["cluster"]["spec"]["scheduler"]["spec"],
                  _chart_pod(_helm_values(), "scheduler")["spec"]]
    for scheduler in schedulers:
        assert "volumes" not in scheduler and "serviceAccountName" not in scheduler
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY", text), path


def _arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_indexed_job_runs_every_shard_once_and_finalize_reads_the_same_tables() -> None:
    manifests = _manifests()
    shards, final = manifests["shards-job.yaml"]["spec"], manifests["finalize-job.yaml"]["spec"]
    assert shards["completionMode"] == "Indexed" and shards["parallelism"] <= shards["completions"]
    args = shards["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run"
    assert _arg_after(args, "--shard") == f"$(JOB_COMPLETION_INDEX)/{shards['completions']}"
    final_args = final["template"]["spec"]["containers"][0]["args"]
    assert final_args[0] == "finalize" and _arg_after(final_args, "--tables") == _arg_after(args, "--tables")
    daskjob = _documents(KUBE / "daskjob.yaml")[0]
    runner = daskjob["spec"]["job"]["spec"]["containers"][0]["args"]
    assert runner[:2] == ["dicom-deid", "run"]
    assert _arg_after(runner, "--scheduler") == "$(DASK_SCHEDULER_ADDRESS)"
    selector = daskjob["spec"]["cluster"]["spec"]["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == daskjob["metadata"]["name"]


# --- SLURM ---------------------------------------------------------------------------------------------


def _launcher():
    spec = importlib.util.spec_from_file_location("dicom_deid_slurm", SLURM / "dicom_deid_slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_cluster_job_script_renders_checks_and_starts_a_worker_with_the_secret(tmp_path: Path) -> None:
    """dask-jobqueue renders the batch script; run here as a node would, its worker joins with the secret."""
    _module("dask_jobqueue")
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    launcher = _launcher()
    secret = tmp_path / "deid secret"
    secret.write_text("not-a-real-secret")
    args = launcher.parse(["--cores", "1", "--processes", "1", "--memory", "1GB", "--interface", "lo",
                           "--partition", "cpu", "--log-directory", str(tmp_path / "logs"),
                           "--secret-file", str(secret), "--", "run", "s3://a/", "s3://b/", "--tables", "s3://c/"])
    assert args.command == ["run", "s3://a/", "s3://b/", "--tables", "s3://c/"]
    with SLURMCluster(**launcher.cluster_options(args)) as cluster, Client(cluster) as client:
        script = tmp_path / "job.sh"
        script.write_text(cluster.job_script())
        text = script.read_text()
        assert "#SBATCH -J dicom-deid-worker" in text and "#SBATCH -p cpu" in text
        assert f"export {SECRET_ENV}='{secret}'" in text
        assert _run("bash", "-n", str(script)).returncode == 0
        node = subprocess.Popen(["bash", str(script)], start_new_session=True, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=90)
            seen = client.run(lambda: os.environ.get(SECRET_ENV))
            assert list(seen.values()) == [str(secret)]
        finally:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(timeout=30)


def test_slurm_launcher_refuses_a_missing_secret_file(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        _launcher().parse(["--secret-file", str(tmp_path / "absent"), "--", "run", "a", "b", "--tables", "c"])
    assert SECRET_ENV in capsys.readouterr().err


def _stub(folder: Path, name: str, body: str) -> None:
    """A stand-in for a SLURM command or the CLI, which this machine does not run; it records its call."""
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def test_submit_starts_the_array_and_a_finalize_that_waits_for_all_of_it(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    _stub(tmp_path, "sbatch", f'echo "$*" >> {calls}; echo "$((4000 + $(wc -l < {calls})));c1"')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SOURCE": "s3://a/", "DEST": "s3://b/",
           "TABLES": "s3://c/"}
    result = _run("bash", str(SLURM / "submit.sh"), "3", "--partition=cpu", env=env)
    assert result.returncode == 0, result.stderr
    array, final = calls.read_text().splitlines()
    assert "--array=0-2" in array and array.endswith("--partition=cpu " + str(SLURM / "shard.sbatch"))
    assert "--dependency=afterany:4001" in final and final.endswith(str(SLURM / "finalize.sbatch"))
    assert "job 4001" in result.stdout and "job 4002" in result.stdout
    assert _run("bash", str(SLURM / "submit.sh"), "0", env=env).returncode == 2


def test_array_task_runs_its_shard_with_the_secret_file(tmp_path: Path) -> None:
    _stub(tmp_path, "dicom-deid", f'echo "$* | ${SECRET_ENV}" > {tmp_path}/called')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SOURCE": "s3://a/", "DEST": "s3://b/",
           "TABLES": "s3://c/", "RUN_OPTIONS": "--retain-uids --clean-descriptions", "HOME": str(tmp_path),
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
           "SLURM_ARRAY_TASK_MAX": "2"}
    env.pop(SECRET_ENV, None)
    assert _run("bash", str(SLURM / "shard.sbatch"), env=env).returncode == 0
    assert (tmp_path / "called").read_text().strip() == (
        "run s3://a/ s3://b/ --tables s3://c/ --shard 1/3 --no-progress --retain-uids --clean-descriptions"
        f" | {tmp_path}/.dicom-deid/secret")
    gap = _run("bash", str(SLURM / "shard.sbatch"), env={**env, "SLURM_ARRAY_TASK_MAX": "5"})
    assert gap.returncode == 2 and "0-(N-1)" in gap.stderr
    final = _run("bash", str(SLURM / "finalize.sbatch"), env=env)
    assert final.returncode == 0
    assert (tmp_path / "called").read_text().startswith("finalize --tables s3://c/ |")
