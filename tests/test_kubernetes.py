"""deploy/kubernetes/: every manifest valid against Kubernetes' own OpenAPI schemas
(kubernetes-validate, offline, strict: no unknown fields), and the pieces fit together: names,
keys, labels, ports, probes, the autoscaler's metric and the config plaudit reads."""
from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from plaudit.service.config import AuthConfig, load_config
from servers import REPO

MANIFESTS = REPO / "deploy" / "kubernetes"
VERSION = "1.30.0"  # the oldest Kubernetes these manifests are meant for; autoscaling/v2 is GA since 1.23


def resources() -> dict[str, dict]:
    found = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


@pytest.mark.parametrize("version", [VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_kubernetes(version):
    found = resources()
    assert {"Deployment/plaudit", "Service/plaudit", "HorizontalPodAutoscaler/plaudit",
            "ConfigMap/plaudit-config", "Secret/plaudit-secrets"} <= set(found)
    for name, doc in found.items():
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field, when invalid
    broken = {**found["Deployment/plaudit"], "spec": {**found["Deployment/plaudit"]["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does catch a misspelt field
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_manifests_fit_together_and_plaudit_reads_the_config(tmp_path):
    found = resources()
    deployment, service = found["Deployment/plaudit"], found["Service/plaudit"]
    hpa = found["HorizontalPodAutoscaler/plaudit"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    secret = found["Secret/plaudit-secrets"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("PLAUDIT_API_KEYS", "PLAUDIT_FEEDBACK_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "plaudit-secrets" and ref["key"] in secret["stringData"]
    # the probes reach plaudit without an API key
    probes = [container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    assert set(probes) <= set(AuthConfig().open_paths)
    # the config the pods mount is one plaudit loads, its models found in the installed package
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    config_map = found[f"ConfigMap/{volume['configMap']['name']}"]
    [(file_name, text)] = config_map["data"].items()
    assert env["PLAUDIT_CONFIG"]["value"] == f"{mount['mountPath']}/{file_name}"
    (tmp_path / file_name).write_text(text)
    config = load_config(tmp_path / file_name)
    for model in config.models.values():
        assert Path(model.path).is_dir(), model.path
    # the autoscaler's metric is one plaudit exports, and the adapter's rule serves it
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert f'"{metric}"' in (REPO / "service" / "monitoring.py").read_text()
    adapter = yaml.safe_load(found["ConfigMap/prometheus-adapter-plaudit"]["data"]["config.yaml"])
    assert re.match(adapter["rules"][0]["seriesQuery"].split("{")[0], metric)
    assert adapter["rules"][0]["name"]["as"] == metric
