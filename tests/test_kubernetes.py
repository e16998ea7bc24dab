"""The Kubernetes manifests: valid, in step with the image, and a pod that serves.

There is no cluster here. kubernetes-validate checks every object offline against
the Kubernetes schemas it ships (strictly: an unknown field fails), yamllint lints
the files, and the web pod is replayed the way tests/test_docker.py replays the
image: its migration and its gunicorn run with the ConfigMap's settings and the
Secret's keys, on a root filesystem made read-only as the pod's is, and its probes
ask their paths over HTTP.
"""

import copy
import json
import os
import re
import secrets
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import DATABASES, LAYOUTS
from test_docker import (
    BIN,
    VENV,
    arguments,
    build_wheel,
    exec_form,
    free_port,
    install_runtime,
    instructions,
)
from test_render import LONGEST

# 1.30 is the oldest release the rendered README promises: the preStop `sleep`
# action is on by default from there.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
KINDS = {
    "sqlite": {
        "configmap.yaml": "ConfigMap",
        "deployment.yaml": "Deployment",
        "pvc.yaml": "PersistentVolumeClaim",
        "service.yaml": "Service",
    },
    "postgresql": {
        "configmap.yaml": "ConfigMap",
        "deployment.yaml": "Deployment",
        "hpa.yaml": "HorizontalPodAutoscaler",
        "migrate-job.yaml": "Job",
        "pdb.yaml": "PodDisruptionBudget",
        "service.yaml": "Service",
    },
}
SECRET_KEYS = {"sqlite": {"SECRET_KEY"}, "postgresql": {"SECRET_KEY", "DATABASE_URL"}}
PLACEHOLDER = "registry.example.com/my-api:0.1.0"
# yamllint's defaults, but a `key: value` line may run long when the value is one
# word (an image name). With the longest names, line length is not checked: the
# migration's command, a flow sequence, runs long.
YAMLLINT_CONFIG = {
    "default": "{extends: default, rules: {line-length: "
    "{allow-non-breakable-inline-mappings: true}}}",
    "longest": "{extends: default, rules: {line-length: disable}}",
}


def manifests(project: Path) -> dict[str, dict]:
    """Each file of deploy/kubernetes/ and the one object it holds."""
    objects = {}
    for path in sorted((project / "deploy" / "kubernetes").iterdir()):
        (objects[path.name],) = yaml.safe_load_all(path.read_text())
    return objects


def pod_specs(objects: dict[str, dict]) -> list[dict]:
    """The pod templates: the Deployment's, and the Job's with postgresql."""
    return [
        manifest["spec"]["template"]["spec"]
        for manifest in objects.values()
        if manifest["kind"] in {"Deployment", "Job"}
    ]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def migration(objects: dict[str, dict]) -> dict:
    """The container that runs `flask db upgrade`: the Job's with postgresql, the
    web pod's init container with sqlite."""
    if "migrate-job.yaml" in objects:
        (container,) = objects["migrate-job.yaml"]["spec"]["template"]["spec"][
            "containers"
        ]
    else:
        (container,) = objects["deployment.yaml"]["spec"]["template"]["spec"][
            "initContainers"
        ]
    return container


def web(objects: dict[str, dict]) -> dict:
    (container,) = objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    return container


def procfile(project: Path) -> dict[str, list[str]]:
    """Each Procfile process as argv, the environment assignments before it dropped
    (the image has no .flaskenv for FLASK_SKIP_DOTENV to skip)."""
    commands = {}
    for line in (project / "Procfile").read_text().splitlines():
        name, command = line.split(": ", 1)
        argv = shlex.split(command)
        while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
            argv.pop(0)
        commands[name] = argv
    return commands


def dockerfile_env(runtime: list[tuple[str, str]]) -> dict[str, str]:
    """The runtime stage's ENV, but PATH (the replay has its own interpreter)."""
    pairs = shlex.split(" ".join(arguments(runtime, "ENV")))
    env = dict(pair.split("=", 1) for pair in pairs)
    del env["PATH"]
    return env


def readme_section(project: Path) -> str:
    readme = (project / "README.md").read_text()
    return re.search(r"^### Kubernetes\n(.*?)(?=^## )", readme, re.M | re.S)[1]


def readme_commands(project: Path) -> list[str]:
    """The shell lines of the README's Kubernetes section, continuations joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", readme_section(project), re.M | re.S)
    return re.sub(r"\\\n\s*", "", "".join(blocks)).splitlines()


@pytest.mark.parametrize("database", DATABASES)
def test_manifests_validate_against_the_kubernetes_schemas(render, database):
    objects = manifests(render(database=database))
    assert {name: obj["kind"] for name, obj in objects.items()} == KINDS[database]
    for version in KUBERNETES_VERSIONS:
        for obj in objects.values():
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_finds_a_misspelt_field(render):
    """Strict validation is what catches a typo the API server would reject."""
    deployment = manifests(render())["deployment.yaml"]
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("names", ["default", "longest"])
@pytest.mark.parametrize("database", DATABASES)
def test_yamllint_finds_nothing(render, database, names):
    project = render(database=database, **(LONGEST if names == "longest" else {}))
    result = subprocess.run(
        [BIN / "yamllint", "--strict", "-d", YAMLLINT_CONFIG[names]] + ["deploy"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("database", DATABASES)
def test_no_deploy_folder_without_docker(render, database):
    project = render(database=database, docker=False)
    assert not (project / "deploy").exists()
    readme = (project / "README.md").read_text()
    assert "Kubernetes" not in readme and "kubectl" not in readme


@pytest.mark.parametrize("database", DATABASES)
def test_objects_refer_to_each_other(render, database):
    objects = manifests(render(database=database))
    deployment = objects["deployment.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = objects["service.yaml"]["spec"]
    assert service["selector"] == labels
    (port,) = service["ports"]
    assert port["targetPort"] in {p["name"] for p in web(objects)["ports"]}
    configmap = objects["configmap.yaml"]["metadata"]["name"]
    secret_refs = set()
    for pod in pod_specs(objects):
        for container in containers(pod):
            assert container["envFrom"] == [{"configMapRef": {"name": configmap}}]
            for variable in container["env"]:
                ref = variable["valueFrom"]["secretKeyRef"]
                assert ref["key"] == variable["name"]
                secret_refs.add((ref["name"], ref["key"]))
    assert secret_refs == {("my-api", key) for key in SECRET_KEYS[database]}
    assert not SECRET_KEYS[database] & objects["configmap.yaml"]["data"].keys()
    # The migration gets what the web pods get.
    migrate = migration(objects)
    assert (migrate["envFrom"], migrate["env"]) == (
        web(objects)["envFrom"],
        web(objects)["env"],
    )
    if database == "postgresql":
        # The autoscaler owns the count: a `replicas` here would reset it on apply.
        assert "replicas" not in deployment["spec"]
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        target = objects["hpa.yaml"]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "my-api")
        assert objects["hpa.yaml"]["spec"]["minReplicas"] >= 2
        assert objects["pdb.yaml"]["spec"]["selector"]["matchLabels"] == labels
        job_labels = objects["migrate-job.yaml"]["spec"]["template"]["metadata"]
        # The Service never routes to the migration's pod.
        assert not service["selector"].items() <= job_labels["labels"].items()
    else:
        # One pod owns the SQLite file: never two, not even during a deploy.
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        pod = deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        claim = objects["pvc.yaml"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pods_run_the_image_as_its_user(render, layout, database):
    project = render(layout=layout, database=database)
    _, runtime = instructions((project / "Dockerfile").read_text())
    (user,) = arguments(runtime, "USER")
    uid, gid = (int(part) for part in user.split(":"))
    for pod in pod_specs(manifests(project)):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers(pod):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
            }
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pods_run_what_the_image_and_the_procfile_run(render, layout, database):
    project = render(layout=layout, database=database)
    objects = manifests(project)
    _, runtime = instructions((project / "Dockerfile").read_text())
    processes = procfile(project)
    compose = yaml.safe_load((project / "compose.yaml").read_text())["services"]

    # The web container keeps the image's ENTRYPOINT: the Procfile's web command.
    assert "command" not in web(objects) and "args" not in web(objects)
    assert exec_form(runtime[-1][1]) == processes["web"]
    # The migration runs the Procfile's release command, as compose does.
    assert migration(objects)["command"] == processes["release"]
    assert compose["migrate"]["entrypoint"] == processes["release"]
    assert ".flaskenv" in (project / ".dockerignore").read_text().split()

    images = {c["image"] for pod in pod_specs(objects) for c in containers(pod)}
    assert images == {PLACEHOLDER}
    (port,) = web(objects)["ports"]
    assert arguments(runtime, "EXPOSE") == [str(port["containerPort"])]
    assert dockerfile_env(runtime)["PORT"] == str(port["containerPort"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert web(objects)[probe]["httpGet"]["port"] == port["name"]

    mounts = {
        mount["mountPath"]
        for container in containers(
            objects["deployment.yaml"]["spec"]["template"]["spec"]
        )
        for mount in container.get("volumeMounts", [])
    }
    module = processes["web"][-1].split(":")[0]
    instance = f"{VENV}/var/{module}-instance"
    if database == "sqlite":
        # The volume goes where the Dockerfile makes the instance folder and
        # compose mounts its own volume.
        assert f"mkdir -p {instance}" in "\n".join(arguments(runtime, "RUN"))
        assert compose["web"]["volumes"] == [f"instance:{instance}"]
        assert mounts == {"/tmp", instance}
    else:
        assert mounts == {"/tmp"}


@pytest.mark.parametrize("database", DATABASES)
def test_grace_period_covers_the_pause_and_gunicorns_graceful_timeout(render, database):
    """The kubelet kills the pod terminationGracePeriodSeconds after it starts
    stopping it, preStop pause included: gunicorn's graceful timeout, as gunicorn
    reads it with the ConfigMap's settings, must fit after the pause."""
    project = render(database=database)
    objects = manifests(project)
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    pause = web(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause > 0
    settings = objects["configmap.yaml"]["data"]
    read = subprocess.run(
        [BIN / "python", "-c", "import runpy; print(runpy.run_path("
         "'gunicorn.conf.py')['graceful_timeout'])"],
        cwd=project,
        env={"PATH": os.environ["PATH"], **settings},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    graceful_timeout = int(read.stdout)
    assert graceful_timeout == int(settings["GRACEFUL_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > pause + graceful_timeout


@pytest.mark.parametrize("database", DATABASES)
def test_readme_deploys_these_manifests(render, database):
    project = render(database=database)
    objects = manifests(project)
    commands = readme_commands(project)
    section = readme_section(project)
    assert f"`{PLACEHOLDER}`" in section

    # Its `sed` puts your image in every container.
    (sed,) = [line for line in commands if line.startswith("sed ")]
    image = "ghcr.io/someone/my-api:1.2.3"
    subprocess.run(
        ["sh", "-c", sed], cwd=project, env={**os.environ, "IMAGE": image}, check=True
    )
    replaced = manifests(project)
    assert {c["image"] for pod in pod_specs(replaced) for c in containers(pod)} == {
        image
    }
    assert PLACEHOLDER not in json.dumps(replaced)

    # The Secret it creates holds the keys the pods read.
    argvs = [shlex.split(line, comments=True) for line in commands]
    (create,) = [argv for argv in argvs if argv[:3] == ["kubectl", "create", "secret"]]
    assert create[3:5] == ["generic", "my-api"]
    keys = {arg.split("=")[1] for arg in create if arg.startswith("--from-literal=")}
    assert keys == SECRET_KEYS[database]

    # It applies files that exist, everything last; with postgresql, the Job first,
    # and the new pods roll out once it has migrated the database.
    kubectl = [argv[1:] for argv in argvs if argv[0] == "kubectl"]
    applied = [argv[-1] for argv in kubectl if argv[0] == "apply"]
    for path in applied:
        assert (project / path).exists(), path
    assert applied[-1] == "deploy/kubernetes/"
    if database == "postgresql":
        job = objects["migrate-job.yaml"]["metadata"]["name"]
        steps = [
            ["delete", "job", job, "--ignore-not-found"],
            ["apply", "-f", "deploy/kubernetes/migrate-job.yaml"],
            ["wait", "--for=condition=complete", f"job/{job}", "--timeout=10m"],
            ["apply", "-f", "deploy/kubernetes/"],
        ]
        assert [kubectl.index(step) for step in steps] == sorted(
            kubectl.index(step) for step in steps
        )
    else:
        assert applied == ["deploy/kubernetes/"]


@pytest.mark.parametrize("database", DATABASES)
def test_pods_share_rate_limits_on_redis(render, database):
    """With `rate_limit`, every pod counts requests in the Redis the Secret names (its
    URL may carry a password), and the ConfigMap holds the limit; the README's Secret
    has that key."""
    project = render(database=database, rate_limit=True)
    objects = manifests(project)
    for manifest in objects.values():
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)
    for pod in pod_specs(objects):
        for container in containers(pod):
            refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"]}
            assert refs["RATELIMIT_STORAGE_URI"] == {
                "name": "my-api",
                "key": "RATELIMIT_STORAGE_URI",
            }
    data = objects["configmap.yaml"]["data"]
    assert "RATELIMIT_STORAGE_URI" not in data
    # The ConfigMap shows the limit the config declares as its default.
    config = (project / "my_api" / "config.py").read_text()
    declared = re.search(r'Setting\("RATELIMIT_DEFAULT", "([^"]+)"', config)[1]
    assert data["RATELIMIT_DEFAULT"] == declared
    argvs = [shlex.split(line, comments=True) for line in readme_commands(project)]
    (create,) = [argv for argv in argvs if argv[:3] == ["kubectl", "create", "secret"]]
    literals = dict(
        arg.removeprefix("--from-literal=").split("=", 1)
        for arg in create
        if arg.startswith("--from-literal=")
    )
    assert literals.keys() == SECRET_KEYS[database] | {"RATELIMIT_STORAGE_URI"}
    assert literals["RATELIMIT_STORAGE_URI"].startswith("redis://")


def declared_settings(project: Path) -> dict[str, bool]:
    """The variables a render's config declares, each with whether it is secret."""
    config = (project / "my_api" / "config.py").read_text()
    declared = re.findall(r'^    Setting\("(\w+)"(.*)\),$', config, re.M)
    return {name: "secret=True" in rest for name, rest in declared}


def check_config(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The rendered config's own check of `env`, as a pod runs it when it starts."""
    script = (
        "import runpy; config = runpy.run_path('my_api/config.py'); "
        "config['check_config'](config['load_config']())"
    )
    return subprocess.run(
        [BIN / "python", "-c", script],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("auth", ["api-key", "jwt"])
def test_pods_get_the_auth_settings(render, auth):
    """`auth`'s settings reach the pods: those that are not secret in the ConfigMap,
    the secret one (JWT_SECRET) from the Secret, optional, as JWT_JWKS_URL can stand
    in for it. A jwt pod refuses to start until its key source and audience are
    filled in, and starts once they are."""
    project, plain = render(auth=auth), render()
    objects = manifests(project)
    for manifest in objects.values():
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)
    added = declared_settings(project).items() - declared_settings(plain).items()
    secret = {name for name, is_secret in added if is_secret}
    data = objects["configmap.yaml"]["data"]
    plain_data = manifests(plain)["configmap.yaml"]["data"]
    assert data.keys() - plain_data.keys() == {name for name, _ in added} - secret
    for pod in pod_specs(objects):
        for container in containers(pod):
            optional = {
                variable["name"]
                for variable in container["env"]
                if variable["valueFrom"]["secretKeyRef"].get("optional")
            }
            assert optional == secret

    env = {"PATH": os.environ["PATH"], **data, "SECRET_KEY": secrets.token_hex(32)}
    started = check_config(project, env)
    if auth == "jwt":
        assert started.returncode != 0
        assert "JWT_JWKS_URL" in started.stderr
        env |= {
            "JWT_JWKS_URL": "https://id.example/.well-known/jwks.json",
            "JWT_AUDIENCE": "https://api.example",
        }
        started = check_config(project, env)
    assert started.returncode == 0, started.stderr


# A new mount namespace where / is read-only but the folders named after it, bound
# over themselves first, and the mounts of their own such as /dev/shm: what a
# container with readOnlyRootFilesystem and those volumes sees.
READ_ONLY_ROOT = """
mount --make-rprivate /
for dir in {writable}; do mount --bind "$dir" "$dir"; done
mount -o remount,bind,ro /
exec "$@"
"""


def read_only_root(command: list[str], writable: list[Path]) -> list[str]:
    script = READ_ONLY_ROOT.format(writable=shlex.join(map(str, writable)))
    unshare = ["unshare", "--user", "--map-root-user", "--mount"]
    return [*unshare, "sh", "-ec", script, "sh", *command]


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except OSError:
        return 0


def test_sqlite_pod_serves_on_a_read_only_root(render, tmp_path):
    """The web pod of the sqlite variant, the only one that writes files: its init
    container migrates, its gunicorn serves and takes a write, and its probes pass,
    with nothing writable but its volumes (/tmp and the instance folder) and
    /dev/shm, where gunicorn keeps its worker heartbeats."""
    project = render()
    objects = manifests(project)
    _, runtime = instructions((project / "Dockerfile").read_text())
    wheel = build_wheel(project, tmp_path)
    prefix, site, workdir = install_runtime(project, runtime, wheel, tmp_path)

    # The pod's volumes, mounted by both its containers: the instance folder at
    # its place in the replayed virtualenv, and a folder for /tmp, which Python
    # and SQLite find through TMPDIR.
    module = exec_form(runtime[-1][1])[-1].split(":")[0]
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    for container in containers(pod):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"/tmp", f"{VENV}/var/{module}-instance"}
    instance = prefix / "var" / f"{module}-instance"
    temporary = tmp_path / "tmp-volume"
    instance.mkdir(parents=True)
    temporary.mkdir()

    port = free_port()
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(site),
        **dockerfile_env(runtime),
        **objects["configmap.yaml"]["data"],
        **{key: secrets.token_hex(32) for key in SECRET_KEYS["sqlite"]},
        # Loopback and a free port, for the pod's own address and port 8000.
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "TMPDIR": str(temporary),
    }

    # The harness itself: the rest of the root filesystem refuses writes.
    refused = subprocess.run(
        read_only_root(["touch", str(workdir / "written")], [instance]),
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr

    # The init container, then the web container.
    migrated = subprocess.run(
        read_only_root(migration(objects)["command"], [instance, temporary]),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert list(instance.glob("*.sqlite3"))

    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(
        read_only_root(exec_form(runtime[-1][1]), [instance, temporary]),
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        liveness = web(objects)["livenessProbe"]["httpGet"]["path"]
        readiness = web(objects)["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + 30
        while get(port, liveness) != 200:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "the liveness probe never passed"
            time.sleep(0.2)
        assert get(port, readiness) == 200
        created = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/items",
            data=json.dumps({"name": "written on a read-only root"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(created, timeout=5) as response:
            assert response.status == 201
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v1/items", timeout=5
        ) as response:
            items = json.load(response)["data"]["items"]
        assert [item["name"] for item in items] == ["written on a read-only root"]
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0, (tmp_path / "gunicorn.log").read_text()
        log.close()
    assert "Read-only file system" not in (tmp_path / "gunicorn.log").read_text()
