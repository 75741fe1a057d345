"""The application side in the cluster: its namespace, the repo credentials and the Application."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.apiextensions import CustomResource

from components.app_project import IN_CLUSTER, PSA_LABELS, app_project_spec, network_policies

REPO_SECRET_LABEL = "argocd.argoproj.io/secret-type"
APP_FINALIZER = "resources-finalizer.argocd.argoproj.io"


def application_spec(repo_url: str, path: str, revision: str, namespace: str, project: str) -> dict[str, Any]:
    """The Application's spec: follow ``revision`` of the chart and keep the cluster in sync."""
    return {
        "project": project,
        "source": {"repoURL": repo_url, "path": path, "targetRevision": revision},
        "destination": {"server": IN_CLUSTER, "namespace": namespace},
        "syncPolicy": {
            "automated": {"prune": True, "selfHeal": True},
            "syncOptions": ["CreateNamespace=false"],
            "retry": {"limit": 5, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}},
        },
    }


def with_git_suffix(url: str) -> str:
    """``url`` ending in ``.git``: Argo CD does not follow GitLab's redirect without it."""
    return url if url.endswith(".git") else f"{url}.git"


@dataclass(frozen=True)
class AppDeploymentArgs:
    """Where the app runs and which repository Argo CD pulls it from."""

    name: str
    namespace: str
    argocd_namespace: str
    repo_url: pulumi.Input[str]
    repo_private_key: pulumi.Input[str]
    chart_path: str
    target_revision: pulumi.Input[str]
    # The app's container port, the only one its NetworkPolicy admits.
    port: int
    # Resources the Application must outlive on destroy and follow on create.
    argocd: pulumi.Resource
    # Resources the repository secret must wait for (the deploy key it authenticates with).
    repo_key_registered: list[pulumi.Resource] = field(default_factory=list)
    # Resources the first sync needs in the repository (the seeded chart).
    repo_content: list[pulumi.Resource] = field(default_factory=list)
    # What the chart's kinds need in the cluster first (Argo Rollouts for a Rollout), and
    # what must outlive the Application on destroy.
    requires: list[pulumi.Resource] = field(default_factory=list)
    # Notification subscriptions and the values their templates read (notifications.subscription_annotations).
    annotations: pulumi.Input[dict[str, str]] | None = None
    # Logical-name prefix (apps.AppNames).
    prefix: str = ""


class AppDeployment(pulumi.ComponentResource):
    """App namespace with its guard rails, AppProject, repository secret and Argo CD Application."""

    def __init__(self, name: str, args: AppDeploymentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:argocd:AppDeployment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        p = args.prefix

        namespace = k8s.core.v1.Namespace(
            f"{p}app-namespace",
            # Pod Security Admission refuses pods that break the `restricted` profile.
            metadata={"name": args.namespace, "labels": {"app.kubernetes.io/managed-by": "argocd", **PSA_LABELS}},
            # Destroy removes the app namespace after the Application and before Argo CD,
            # so nothing Argo CD deployed is left running without its controller.
            opts=child.merge(pulumi.ResourceOptions(depends_on=[args.argocd])),
        )
        # Owned here, not by the chart (the AppProject refuses the kind), so no merged chart
        # change can delete or widen them.
        policies = [
            k8s.networking.v1.NetworkPolicy(
                f"{p}network-policy-{policy['metadata']['name']}",
                metadata=policy["metadata"],
                spec=policy["spec"],
                opts=child.merge(pulumi.ResourceOptions(depends_on=[namespace])),
            )
            for policy in network_policies(args.namespace, args.name, args.port)
        ]
        repo_url = pulumi.Output.from_input(args.repo_url).apply(with_git_suffix)
        project = CustomResource(
            f"{p}argocd-project",
            api_version="argoproj.io/v1alpha1",
            kind="AppProject",
            metadata={"name": args.name, "namespace": args.argocd_namespace},
            spec=repo_url.apply(lambda url: app_project_spec(url, args.namespace)),
            # Needs the AppProject CRD; the Application depends on it, so destroy deletes the
            # Application (whose finalizer needs its project) first.
            opts=child.merge(pulumi.ResourceOptions(depends_on=[args.argocd])),
        )
        repo_secret = k8s.core.v1.Secret(
            f"{p}manifest-repo",
            metadata={
                "name": f"repo-{args.name}",
                "namespace": args.argocd_namespace,
                "labels": {REPO_SECRET_LABEL: "repository"},
            },
            type="Opaque",
            string_data={
                "type": "git",
                "name": args.name,
                # Serves only this app's project (Argo CD matches URL plus project first).
                "project": args.name,
                "url": repo_url,
                "sshPrivateKey": pulumi.Output.secret(args.repo_private_key),
            },
            # Needs Argo CD's namespace; waits for the deploy key so that, when the key is
            # rotated, Argo CD switches only once GitLab accepts the new key.
            opts=child.merge(pulumi.ResourceOptions(depends_on=[args.argocd, *args.repo_key_registered])),
        )
        CustomResource(
            f"{p}application",
            api_version="argoproj.io/v1alpha1",
            kind="Application",
            metadata={
                "name": args.name,
                "namespace": args.argocd_namespace,
                **({"annotations": args.annotations} if args.annotations is not None else {}),
                # The controller deletes what the Application deployed before the
                # Application itself goes, so destroy leaves no workloads behind.
                "finalizers": [APP_FINALIZER],
            },
            spec=pulumi.Output.all(repo_url, args.target_revision).apply(
                lambda values: application_spec(values[0], args.chart_path, values[1], args.namespace, args.name)
            ),
            # Depending on the whole Argo CD install (its CRDs and ready workloads), the app
            # namespace and the AppProject makes destroy delete the Application first, while
            # the controller that honours its finalizer still runs, and before its namespace
            # and project disappear. The seeded chart and the guard rails come first, so the
            # first sync finds the chart and lands behind the policies.
            opts=child.merge(
                pulumi.ResourceOptions(
                    depends_on=[args.argocd, namespace, project, *policies, repo_secret, *args.repo_content, *args.requires]
                )
            ),
        )
        self.namespace = namespace.metadata.name
        self.repo_url = repo_url
        self.register_outputs({"namespace": self.namespace, "repoUrl": repo_url, "project": args.name})
