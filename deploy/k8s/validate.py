"""Validate the Kubernetes manifests offline: render each kustomization, check every object
against the bundled Kubernetes JSON schemas (strict: an unknown or misspelt field fails), and
check that the pod's grace period covers the preStop pause plus the service's drain.

    python deploy/k8s/validate.py                      # base and overlays/gpu, Kubernetes 1.30 and 1.37
    python deploy/k8s/validate.py --kubernetes 1.33.0 deploy/k8s/overlays/gpu

Needs kubernetes-validate (schemas for every Kubernetes release, no cluster, no network),
jsonpatch and PyYAML: deploy/requirements-ci.txt. Rendering covers the subset of kustomize these
manifests use, `resources` and RFC 6902 `patches` with a `target`; anything else in a
kustomization.yaml is refused rather than silently ignored. Where kubectl is at hand,
`kubectl kustomize DIR` gives the same objects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import yaml

K8S_DIR = Path(__file__).resolve().parent
DEFAULT_TARGETS = [K8S_DIR / "base", K8S_DIR / "overlays" / "gpu"]
# 1.30: the oldest release whose pods take a native preStop `sleep`; 1.37: the newest schema bundled.
DEFAULT_VERSIONS = ["1.30.0", "1.37.0"]
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches"}
TARGET_KEYS = {"group", "version", "kind", "name"}


class RenderError(Exception):
    """The kustomization cannot be rendered (unsupported feature, patch that does not apply)."""


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` would produce, for the supported subset."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise RenderError(f"{directory}: kustomization fields not supported here: {sorted(unsupported)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for patch in kustomization.get("patches", []):
        objects = apply_patch(objects, directory / patch["path"], patch.get("target", {}))
    return objects


def apply_patch(objects: list[dict[str, Any]], patch_file: Path, target: dict[str, str]) -> list[dict[str, Any]]:
    """Apply one RFC 6902 patch to every object the target selects; at least one must match."""
    if not target or set(target) - TARGET_KEYS:
        raise RenderError(f"{patch_file}: a target with only {sorted(TARGET_KEYS)} is required")
    operations = yaml.safe_load(patch_file.read_text())
    matched = 0
    result = []
    for obj in objects:
        if selects(target, obj):
            matched += 1
            try:
                obj = jsonpatch.apply_patch(obj, operations)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise RenderError(f"{patch_file}: {error}") from error
        result.append(obj)
    if matched == 0:
        raise RenderError(f"{patch_file}: target {target} matches no object")
    return result


def selects(target: dict[str, str], obj: dict[str, Any]) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    actual = {"group": group, "version": version, "kind": obj.get("kind"), "name": obj["metadata"].get("name")}
    return all(actual[key] == value for key, value in target.items())


def grace_problems(obj: dict[str, Any]) -> list[str]:
    """A Deployment whose grace period does not cover preStop sleep + the service's drain delay and timeout."""
    if obj.get("kind") != "Deployment":
        return []
    pod = obj["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    problems = []
    for container in pod["containers"]:
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        # The service's defaults (service/settings.py) when the manifest leaves them out.
        drain = float(env.get("CXR_DRAIN_DELAY_S") or 2.0) + float(env.get("CXR_DRAIN_TIMEOUT_S") or 20.0)
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if grace <= pause + drain:
            problems.append(
                f"terminationGracePeriodSeconds {grace} must exceed preStop sleep {pause} s + drain {drain:g} s"
            )
    return problems


def validate(directory: Path, versions: list[str]) -> list[str]:
    """Every problem with one kustomization, as lines naming the object."""
    try:
        objects = render(directory)
    except (RenderError, OSError, yaml.YAMLError, KeyError) as error:
        return [f"{directory}: cannot render: {error}"]
    problems = []
    for obj in objects:
        name = f"{directory.relative_to(K8S_DIR)}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
                problems.append(f"{name} (Kubernetes {version}): {getattr(error, 'message', error)}")
        problems += [f"{name}: {problem}" for problem in grace_problems(obj)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate the Kubernetes manifests offline.")
    parser.add_argument("targets", nargs="*", type=Path, help="kustomization folders (default: base, overlays/gpu)")
    parser.add_argument("--kubernetes", action="append", help="Kubernetes version(s) to validate against")
    args = parser.parse_args(argv)
    versions = args.kubernetes or DEFAULT_VERSIONS
    problems = []
    for target in args.targets or DEFAULT_TARGETS:
        found = validate(target.resolve(), versions)
        problems += found
        print(f"{'FAIL' if found else 'ok  '} {target} (Kubernetes {', '.join(versions)})")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
