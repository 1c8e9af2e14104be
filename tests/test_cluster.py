"""What a cluster operator applies (cluster/): it parses, each tool's schema accepts it, and the
parts agree with each other and with the code.

Checked here, without a cluster: every job config (also the one inside the ConfigMap) loads
through the real `Config`; the Ray launcher YAML passes Ray's own schema; Kubernetes manifests have
the fields their kind requires and only field names KubeRay's v1 API knows; every RayJob runs one
of the stage entrypoints from the image; every cluster has room for the actors and Train
workers its config asks for; the IAM policy covers every output prefix; each file's header names
the command that uses it.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from adapt import cli
from adapt.config import Config, format_errors

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
STAGES = set(cli.STAGES)  # every stage the command runs has a job entrypoint

YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))
# Every file an operator runs or applies: its header comment names the command that uses it.
SHIPPED = [
    *YAML_FILES,
    *sorted(CLUSTER.rglob("*.sh")),
    *sorted((CLUSTER / "docker").glob("Dockerfile*")),
]
# A header line that is a command (not prose that mentions one) starts with one of these.
COMMAND = re.compile(r"#\s*(ray|kubectl|aws|docker|make) ")

# Field names of KubeRay's ray.io/v1 API (ray-operator/apis/ray/v1), to catch a misspelt key that
# the API server would drop without a word. Extend when a manifest uses a new field.
RAYJOB_SPEC = set(
    """activeDeadlineSeconds backoffLimit rayClusterSpec submitterPodTemplate metadata
    clusterSelector submitterConfig managedBy deletionStrategy entrypoint runtimeEnvYAML jobId
    submissionMode entrypointResources entrypointNumCpus entrypointNumGpus ttlSecondsAfterFinished
    shutdownAfterJobFinishes suspend""".split()
)
RAYCLUSTER_SPEC = set(
    """headGroupSpec workerGroupSpecs rayVersion enableInTreeAutoscaling autoscalerOptions
    headServiceAnnotations suspend managedBy""".split()
)
HEAD_GROUP = set("serviceType headService enableIngress rayStartParams template".split())
WORKER_GROUP = set(
    """groupName replicas minReplicas maxReplicas numOfHosts rayStartParams template scaleStrategy
    suspend idleTimeoutSeconds""".split()
)
AUTOSCALER_OPTIONS = set(
    """resources image imagePullPolicy env envFrom volumeMounts securityContext idleTimeoutSeconds
    upscalingMode version""".split()
)


# Parsed once per session; the tests only read what they get.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load_all(path: Path) -> list:
    return [d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d is not None]


def manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in load_all(p)]


def of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in manifests() if d["kind"] == kind]


def job_configs() -> list[tuple[str, dict]]:
    """Every adapt job config shipped under cluster/: YAML documents with a `corpus` key, and
    YAML strings inside ConfigMaps that have one."""
    found = []
    for path in YAML_FILES:
        for doc in load_all(path):
            if isinstance(doc, dict) and "corpus" in doc:
                found.append((str(path.relative_to(REPO)), doc))
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    embedded = yaml.safe_load(text)
                    if isinstance(embedded, dict) and "corpus" in embedded:
                        found.append((f"{path.relative_to(REPO)}:data.{key}", embedded))
    return found


def validate(source: str, data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:  # reported the way `adapt --config` reports it
        pytest.fail(format_errors(e, Config, source))


def ray_version() -> str:
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    return pins["ray"].strip()


def cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) for the RayCluster and for every RayJob that brings its own."""
    out = [(p.name, d["spec"]) for p, d in of_kind("RayCluster")]
    out += [
        (p.name, d["spec"]["rayClusterSpec"])
        for p, d in of_kind("RayJob")
        if "rayClusterSpec" in d["spec"]
    ]
    return out


def ray_pod_templates() -> list[tuple[str, str, dict]]:
    """(where, group, pod template) of every Ray head and worker group."""
    out = []
    for where, spec in cluster_specs():
        out.append((where, "head", spec["headGroupSpec"]["template"]))
        out += [(where, g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def quantity(value) -> float:
    """A Kubernetes CPU or GPU quantity as a number: "7", "500m", 1."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def slots(nodes: list[tuple[float, float, int]], cpus: float, gpus: float) -> int:
    """How many bundles of `cpus` CPUs and `gpus` GPUs fit on (cpu, gpu, count) nodes."""
    total = 0
    for cpu, gpu, count in nodes:
        fit = math.floor(cpu / cpus + 1e-9) if cpus else math.inf
        if gpus:
            fit = min(fit, math.floor(gpu / gpus + 1e-9))
        total += 0 if fit == math.inf else fit * count
    return total


def assert_fits(
    config: Config, nodes: list[tuple[float, float, int]], where: str, stages: set[str]
) -> None:
    if "extract" in stages:
        ext = config.extract
        room = slots(nodes, ext.num_cpus_per_worker, ext.num_gpus_per_worker)
        assert room >= ext.num_workers, (
            f"{where}: extract.num_workers={ext.num_workers} actors of {ext.num_cpus_per_worker} "
            f"CPUs and {ext.num_gpus_per_worker} GPUs, but the cluster holds {room}: the job "
            "would wait for resources forever"
        )
    if "train" in stages and not config.train.is_local:
        tr = config.train
        room = slots(nodes, tr.num_cpus_per_worker, 1.0 if tr.use_gpu else 0.0)
        assert room >= tr.num_workers, (
            f"{where}: train.num_workers={tr.num_workers} Ray Train workers of "
            f"{tr.num_cpus_per_worker} CPUs, but the cluster holds {room}"
        )
    if "apply" in stages:
        ap = config.apply
        room = slots(nodes, ap.num_cpus_per_worker, 0.0)
        assert room >= ap.num_workers, (
            f"{where}: apply.num_workers={ap.num_workers} actors of {ap.num_cpus_per_worker} CPUs, "
            f"but the cluster holds {room}"
        )


# -- every file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path):
    docs = load_all(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_header_names_the_command_that_uses_it(path):
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("#"), (
        f"{path} must start with a comment naming its command"
    )
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        if not line.startswith("#!"):
            header.append(line)
    assert any(COMMAND.match(line) for line in header), (
        f"{path}: no line of the header comment is the command that uses the file "
        "(`# ray ...`, `# kubectl ...`, `# aws ...`, `# docker ...`, `# make ...`)"
    )


# -- job configs --------------------------------------------------------------------------------


def test_every_job_config_loads():
    configs = job_configs()
    names = {name for name, _ in configs}
    assert {"cluster/configs/s3-clip.yaml", "cluster/configs/s3-hf.yaml"} <= names
    assert any(":data." in name for name in names), "no job config found inside a ConfigMap"
    for name, data in configs:
        validate(name, data)


def test_configmap_job_config_is_the_s3_clip_example():
    (cm,) = [d for _, d in of_kind("ConfigMap") if d["metadata"]["name"] == "adapt-job-config"]
    shipped = yaml.safe_load((CLUSTER / "configs" / "s3-clip.yaml").read_text())
    assert yaml.safe_load(cm["data"]["job.yaml"]) == shipped, (
        "cluster/kuberay/configmap-job.yaml differs from cluster/configs/s3-clip.yaml: copy the "
        "config into it again (the commands are in its header)"
    )


def test_real_models_on_s3():
    clip = validate("s3-clip", yaml.safe_load((CLUSTER / "configs" / "s3-clip.yaml").read_text()))
    assert {s.name for s in clip.encoders.values()} == {"open_clip:ViT-B-32@laion2b_s34b_b79k"}
    assert clip.extract.dtype == "float16" and clip.extract.num_gpus_per_worker >= 1
    hf = validate("s3-hf", yaml.safe_load((CLUSTER / "configs" / "s3-hf.yaml").read_text()))
    assert hf.encoders["text"].name == "st:sentence-transformers/all-mpnet-base-v2"
    assert hf.encoders["text"].pooling is None and hf.encoders["text"].max_length is None
    assert hf.encoders["image"].name == "hf:google/vit-base-patch16-224-in21k"
    assert hf.encoders["image"].pooling == "cls"
    for cfg in (clip, hf):
        assert cfg.corpus.startswith("s3://") and cfg.output.startswith("s3://")


# -- Ray cluster launcher -----------------------------------------------------------------------


def launcher() -> dict:
    return yaml.safe_load((CLUSTER / "aws" / "cluster.yaml").read_text())


def test_launcher_yaml_passes_rays_schema():
    import jsonschema

    cfg = launcher()
    assert cfg["cluster_name"] and cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for name, node in types.items():
        assert "resources" in node and "node_config" in node, name
        assert "IamInstanceProfile" in node["node_config"], f"{name}: S3 access needs a profile"
    assert any(node["resources"].get("GPU", 0) >= 1 for node in types.values())
    # The schema `ray up` validates against, from the installed Ray (found without importing it).
    spec = importlib.util.find_spec("ray")
    schema = json.loads(
        (Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text()
    )
    jsonschema.validate(cfg, schema)


def test_launcher_installs_the_pinned_project():
    cfg = launcher()
    setup = " ".join(cfg["setup_commands"])
    assert "pip install --quiet -r ~/adapt/requirements.lock" in setup
    assert "pip install --quiet --no-deps -e ~/adapt" in setup
    assert re.search(r"ADAPT_COMMIT=\w+", setup) and "checkout" in setup
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray_version()}-py311")
    for name, node in cfg["available_node_types"].items():
        image = node.get("docker", {}).get("worker_image", cfg["docker"]["image"])
        assert image.startswith(f"rayproject/ray:{ray_version()}-py311"), name
        if node["resources"].get("GPU"):
            # The NVIDIA runtime the launcher adds exposes GPUs only to a CUDA image, which sets
            # NVIDIA_VISIBLE_DEVICES.
            assert re.search(r"-(gpu|cu\d+)$", image), f"{name}: {image} would see no GPU"


def test_launcher_has_room_for_every_config():
    types = launcher()["available_node_types"]
    nodes = [
        (n["resources"].get("CPU", 0), n["resources"].get("GPU", 0), n.get("max_workers", 1))
        for n in types.values()
    ]
    for name, data in job_configs():
        assert_fits(
            validate(name, data), nodes, f"{name} on cluster/aws/cluster.yaml", {"extract", "train"}
        )


# -- KubeRay and Kubernetes ---------------------------------------------------------------------


def test_manifests_have_their_kinds_required_fields():
    kinds = set()
    for path, doc in manifests():
        where = f"{path.name} {doc.get('kind')}"
        assert doc.get("apiVersion") and doc.get("kind"), where
        kinds.add(doc["kind"])
        meta = doc.get("metadata") or {}
        # A RayJob is one run: `kubectl create` names each from generateName.
        assert meta.get("name") or (doc["kind"] == "RayJob" and meta.get("generateName")), where
        spec = doc.get("spec") or {}
        match doc["kind"]:
            case "RayCluster":
                assert doc["apiVersion"] == "ray.io/v1", where
            case "RayJob":
                assert doc["apiVersion"] == "ray.io/v1", where
                assert spec.get("entrypoint"), where
                assert "rayClusterSpec" in spec or "clusterSelector" in spec, where
                unknown = set(spec) - RAYJOB_SPEC
                assert not unknown, f"{where}: not RayJob fields: {sorted(unknown)}"
                if spec.get("shutdownAfterJobFinishes"):
                    assert "rayClusterSpec" in spec, f"{where}: nothing to shut down"
                    assert spec.get("ttlSecondsAfterFinished", 0) >= 0, where
            case "RayCronJob":
                assert spec.get("schedule") and spec.get("jobTemplate"), where
            case "CronJob":
                assert doc["apiVersion"] == "batch/v1", where
                assert spec.get("schedule") and spec["jobTemplate"]["spec"]["template"], where
                assert spec.get("concurrencyPolicy") == "Forbid", f"{where}: runs must not overlap"
            case "Role":
                assert doc["rules"], where
            case "RoleBinding":
                assert doc["roleRef"] and doc["subjects"], where
            case "ConfigMap":
                assert doc["data"], where
            case "ServiceAccount" | "Namespace":
                pass
            case other:
                pytest.fail(f"{where}: no check for kind {other}; add one here")
    assert {"RayCluster", "RayJob", "ConfigMap"} <= kinds
    assert kinds & {"CronJob", "RayCronJob"}, "no scheduled nightly run"
    for where, spec in cluster_specs():
        assert not set(spec) - RAYCLUSTER_SPEC, f"{where}: {sorted(set(spec) - RAYCLUSTER_SPEC)}"
        assert not set(spec.get("autoscalerOptions") or {}) - AUTOSCALER_OPTIONS, where
        head = spec["headGroupSpec"]
        assert head["template"]["spec"]["containers"] and not set(head) - HEAD_GROUP, where
        assert spec["workerGroupSpecs"], where
        for group in spec["workerGroupSpecs"]:
            assert not set(group) - WORKER_GROUP, f"{where}: {sorted(set(group) - WORKER_GROUP)}"
            assert group["groupName"] and "replicas" in group and group["template"], where
            assert group.get("minReplicas", 0) <= group["replicas"] <= group["maxReplicas"], where


def test_one_rayjob_per_stage_running_its_entrypoint():
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "docker" / "Dockerfile").read_text(), re.M)
    stages = {}
    for path, doc in of_kind("RayJob"):
        entry = doc["spec"]["entrypoint"]
        found = re.fullmatch(r"python (\S*?)jobs/(\w+)\.py --config (\S+)", entry)
        assert found, (
            f"{path.name}: entrypoint {entry!r} is not `python .../jobs/STAGE.py --config`"
        )
        prefix, stage, config = found.groups()
        assert stage in STAGES, f"{path.name}: jobs/{stage}.py is not a stage ({sorted(STAGES)})"
        assert (REPO / "jobs" / f"{stage}.py").is_file(), f"{path.name}: no jobs/{stage}.py"
        assert prefix in ("", workdir.group(1) + "/"), f"{path.name}: the image has it elsewhere"
        assert path.name == f"rayjob-{stage}.yaml", path.name
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == stage
        # --config is a file of a ConfigMap mounted on the head, where the driver runs.
        head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mount_dir, _, key = config.rpartition("/")
        (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == mount_dir]
        (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
        (cm,) = [
            d
            for _, d in of_kind("ConfigMap")
            if d["metadata"]["name"] == volume["configMap"]["name"]
        ]
        assert key in cm["data"], f"{path.name}: ConfigMap has no {key}"
        stages[stage] = doc
    assert set(stages) == STAGES


def test_rayjob_clusters_have_room_for_the_config():
    (cm,) = [d for _, d in of_kind("ConfigMap") if d["metadata"]["name"] == "adapt-job-config"]
    config = validate("configmap-job.yaml", yaml.safe_load(cm["data"]["job.yaml"]))
    for path, doc in of_kind("RayJob"):
        stage = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        nodes = []
        for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            # KubeRay starts Ray with the container's limits as its CPUs and GPUs.
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            cpu, gpu = quantity(limits["cpu"]), quantity(limits.get("nvidia.com/gpu", 0))
            nodes.append((cpu, gpu, g["maxReplicas"]))
        needs = {"extract", "train"} if stage == "nightly" else {stage}
        assert_fits(config, nodes, path.name, needs)


def test_one_image_one_ray_version_and_s3_through_the_service_account():
    templates = [t for _, _, t in ray_pod_templates()]
    templates += [d["spec"]["jobTemplate"]["spec"]["template"] for _, d in of_kind("CronJob")]
    images = {c["image"] for t in templates for c in t["spec"]["containers"]}
    assert len(images) == 1, f"every pod should run the same adapt image, found {sorted(images)}"
    base = re.search(r"^FROM (\S+)", (CLUSTER / "docker" / "Dockerfile").read_text(), re.M)
    assert base.group(1).startswith(f"rayproject/ray:{ray_version()}-py311")
    for where, spec in cluster_specs():
        assert spec["rayVersion"] == ray_version(), f"{where}: Ray {ray_version()} is pinned"
    accounts = {d["metadata"]["name"]: d for _, d in of_kind("ServiceAccount")}
    for where, group, template in ray_pod_templates():
        sa = template["spec"].get("serviceAccountName")
        assert sa in accounts, f"{where} {group}: pods reach S3 through their service account"
        assert "eks.amazonaws.com/role-arn" in accounts[sa]["metadata"]["annotations"]
        resources = template["spec"]["containers"][0]["resources"]
        assert resources["limits"], f"{where} {group}: Ray sizes itself from the limits"
        if group == "gpu":
            assert quantity(resources["limits"]["nvidia.com/gpu"]) >= 1, where


def test_nightly_schedule_creates_and_watches_the_nightly_rayjob():
    (cron,) = [d for _, d in of_kind("CronJob")]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # RBAC: the pod's service account may create (and read) RayJobs.
    sa = pod["serviceAccountName"]
    (binding,) = [
        d
        for _, d in of_kind("RoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in d["subjects"])
    ]
    (role,) = [d for _, d in of_kind("Role") if d["metadata"]["name"] == binding["roleRef"]["name"]]
    granted = {
        v
        for r in role["rules"]
        if "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"]
        for v in r["verbs"]
    }
    assert {"create", "get"} <= granted
    # It creates the RayJob of rayjob-nightly.yaml (mounted from a ConfigMap) and its guard
    # selects RayJobs by that file's label.
    script = pod["containers"][0]["args"][0]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert f"{mount['mountPath']}/rayjob.yaml" in script
    nightly = load_all(KUBERAY / "rayjob-nightly.yaml")[0]
    label = nightly["metadata"]["labels"]["app.kubernetes.io/component"]
    assert f"app.kubernetes.io/component={label}" in script
    subprocess.run(["bash", "-n", "-c", script], check=True)


# -- runtime env, submit script, IAM ------------------------------------------------------------


def test_runtime_env_uploads_the_code_and_not_the_venv():
    # Ray's own matcher, so that this agrees with what `ray job submit` uploads.
    from ray._private.runtime_env.packaging import _get_excludes

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "config"}
    assert env["working_dir"] == "." and "HF_HOME" in env["env_vars"]
    excluded = _get_excludes(REPO, env["excludes"])
    for path in (
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        "out/demo/x.parquet",
        ".git/config",
        "adapt/__pycache__/x.pyc",
    ):
        assert excluded(REPO / path), f"{path} would be uploaded with every job"
    for path in (
        "jobs/extract.py",
        "adapt/config.py",
        "cluster/configs/s3-clip.yaml",
        "requirements.lock",
    ):
        assert not excluded(REPO / path), f"{path} would be left out of the job"


def test_submit_script_knows_every_stage():
    script = (CLUSTER / "jobs" / "submit.sh").read_text()
    stages = re.search(r'^STAGES="([^"]+)"', script, re.M).group(1).split()
    assert set(stages) == STAGES
    assert "--runtime-env cluster/runtime_env.yaml" in script
    subprocess.run(["bash", "-n", str(CLUSTER / "jobs" / "submit.sh")], check=True)


def allows(policy: dict, action: str, resource: str, prefix: str | None = None) -> bool:
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if st["Effect"] != "Allow" or not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        condition = (st.get("Condition") or {}).get("StringLike", {}).get("s3:prefix")
        if condition is None or (
            prefix is not None and any(fnmatch.fnmatchcase(prefix, c) for c in condition)
        ):
            return True
    return False


def test_iam_policy_covers_every_s3_config():
    policy = json.loads((CLUSTER / "iam" / "s3-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    checked = 0
    for name, data in job_configs():
        cfg = validate(name, data)
        for uri, writes, some_file in (
            (cfg.output, True, "embeddings/_manifest.json"),
            (cfg.corpus, False, "part-00000.parquet"),
        ):
            if not uri.startswith("s3://"):
                continue
            bucket, _, key = uri[len("s3://") :].rstrip("/").partition("/")
            obj = f"arn:aws:s3:::{bucket}/{key}/{some_file}"
            assert allows(policy, "s3:GetObject", obj), f"{name}: cannot read {uri}"
            assert allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", f"{key}/"), name
            if writes:
                for action in ("s3:PutObject", "s3:DeleteObject"):
                    assert allows(policy, action, obj), f"{name}: no {action} on {uri}"
            checked += 1
    assert checked >= 4
    # Least privilege: the corpus is read, never written.
    corpus = yaml.safe_load((CLUSTER / "configs" / "s3-clip.yaml").read_text())["corpus"]
    bucket, _, key = corpus[len("s3://") :].partition("/")
    assert not allows(policy, "s3:PutObject", f"arn:aws:s3:::{bucket}/{key}part-0.parquet")


def _pins(name: str) -> dict[str, str]:
    return {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1]
        for line in (REPO / name).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }


def test_the_production_lock_holds_no_test_tool_and_pyproject_pins_nothing():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    prod, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert not set(prod) & set(dev)
    for tool in ("pytest", "moto", "ruff", "flask", "duckdb", "boto3", "simple-icd-10-cm"):
        assert tool in dev and tool not in prod, tool
    # Every dependency, demo encoder and the object store a job needs is pinned in the
    # production lock.
    extras = project["optional-dependencies"]
    assert {"demo", "s3", "bench", "test"} <= set(extras)
    for req in [*project["dependencies"], *extras["demo"], *extras["s3"]]:
        name = re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in prod, name
        assert "==" not in req, f"{req}: pyproject.toml takes ranges; the lock files pin"
    assert "requirements-dev" not in (REPO / "cluster" / "docker" / "Dockerfile").read_text()
    assert (REPO / "adapt" / "py.typed").exists()
