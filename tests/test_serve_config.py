"""cluster/serve.yaml: valid for Serve's own schema AND made only of keys we mean to set (Serve's
schema silently ignores a misspelt key), its args valid facebatch options, and the app buildable
from it; `serve build` works offline on the module-level app."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
SERVE_YAML = ROOT / "cluster" / "serve.yaml"

# The keys we mean to set, level by level. Adding a key to serve.yaml means adding it here.
TOP_KEYS = {"proxy_location", "http_options", "logging_config", "applications"}
HTTP_KEYS = {"host", "port", "request_timeout_s", "keep_alive_timeout_s"}
LOGGING_KEYS = {"log_level", "encoding"}
APP_KEYS = {"name", "route_prefix", "import_path", "args"}
ARG_KEYS = {"detector", "keypoints", "attributes", "device", "autoscale", "replica_cpus", "torch_threads",
            "ingress_replicas", "ingress_cpus", "max_batch_size", "batch_wait_timeout_s", "max_queued_requests",
            "retry_after_s", "request_timeout_s", "max_body_mb", "max_pixels", "require_token"}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(SERVE_YAML.read_text())


def test_keys_are_the_ones_we_mean(config):
    assert set(config) == TOP_KEYS
    assert set(config["http_options"]) == HTTP_KEYS
    assert set(config["logging_config"]) == LOGGING_KEYS
    assert len(config["applications"]) == 1
    app = config["applications"][0]
    assert set(app) == APP_KEYS
    assert set(app["args"]) == ARG_KEYS
    # no `deployments:` override: the limits come from build_app, consistent by construction
    assert "deployments" not in app


def test_every_key_is_known_to_serves_schema(config):
    from ray.serve.schema import HTTPOptionsSchema, LoggingConfig, ServeApplicationSchema, ServeDeploySchema
    schema = ServeDeploySchema.model_validate(config)
    for keys, model in ((config, ServeDeploySchema), (config["http_options"], HTTPOptionsSchema),
                        (config["logging_config"], LoggingConfig),
                        (config["applications"][0], ServeApplicationSchema)):
        unknown = set(keys) - set(model.model_fields)
        assert not unknown, f"{model.__name__} does not know {unknown} (Serve would ignore them silently)"
    app = schema.applications[0]
    assert (app.name, app.route_prefix, app.import_path) == ("facebatch", "/", "facebatch.serve.app:build_app")
    assert schema.http_options.port == 8000


def test_args_are_valid_options_and_build_the_app(config):
    from ray.serve import Application

    from facebatch.serve.app import build_app
    from facebatch.serve.options import ServeOptions
    args = config["applications"][0]["args"]
    o = ServeOptions.from_dict(args)  # unknown or misspelt keys raise here
    assert o.require_token, "serve.yaml binds 0.0.0.0: the token must be required"
    assert o.autoscale_range() == (1, 8) and o.max_batch_size == 16
    lim = o.limits()
    assert lim["model_max_ongoing_requests"] >= o.max_batch_size
    assert lim["ingress_max_ongoing_requests"] >= lim["model_max_ongoing_requests"] * o.max_replicas
    assert isinstance(build_app(args), Application)
    with pytest.raises(ValueError, match="max_batch_sise"):
        build_app({**args, "max_batch_sise": 8})


def test_serve_build_works_offline(tmp_path):
    serve_cli = Path(sys.executable).with_name("serve")
    if not serve_cli.exists():
        pytest.skip("the `serve` command is not installed beside this Python")
    out = tmp_path / "built.yaml"
    r = subprocess.run([str(serve_cli), "build", "facebatch.serve.app:app", "-o", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    built = yaml.safe_load(out.read_text())
    deps = {d["name"]: d for d in built["applications"][0]["deployments"]}
    assert set(deps) == {"Ingress", "FaceModel"}
    assert deps["FaceModel"]["max_ongoing_requests"] == 32  # 2 x the default max_batch_size 16
    assert deps["Ingress"]["max_ongoing_requests"] >= 32 + deps["FaceModel"]["max_queued_requests"]
