"""The app project's `.gitlab-ci.yml`: build the image, bump the chart, open a merge request.

Pure module: no Pulumi, no I/O. Every value that varies between installations is
a pipeline variable, so the job scripts are constant text that can be linted and
run as-is. Secrets never appear here: they are CI/CD variables on the project
(`DOCKERHUB_TOKEN`, `SSH_PRIVATE_KEY`, `SSH_KNOWN_HOSTS`, and `GITLAB_PRIVATE_TOKEN`
when the merge request is opened through the API); see `required_variables`.

The merge request is opened one of two ways (`PipelineSpec.merge_request_via`):

- "api": a third job POSTs to the merge requests API with `GITLAB_PRIVATE_TOKEN`
  (a project access token, which gitlab.com Free does not offer);
- "push-options": the manifest push itself carries `-o merge_request.create ...`, so
  GitLab opens the merge request as the deploy key's owner and no API token is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

STAGE_BUILD = "build"
STAGE_UPDATE_MANIFEST = "update-manifest"
STAGE_OPEN_MR = "open-mr"
# Stages and jobs of the "api" mode; `pipeline_stages`/`pipeline_jobs` give them per spec.
STAGES: tuple[str, ...] = (STAGE_BUILD, STAGE_UPDATE_MANIFEST, STAGE_OPEN_MR)

JOB_BUILD = "build-image"
# Merge-request pipelines: build the image to catch a broken Dockerfile before merge; push nothing.
JOB_BUILD_CHECK = "build-check"
JOB_UPDATE_MANIFEST = "update-manifest"
JOB_OPEN_MR = "open-merge-request"
JOBS: tuple[str, ...] = (JOB_BUILD, JOB_UPDATE_MANIFEST, JOB_OPEN_MR)

MERGE_REQUEST_VIA_API = "api"
MERGE_REQUEST_VIA_PUSH_OPTIONS = "push-options"
MERGE_REQUEST_VIA: tuple[str, ...] = (MERGE_REQUEST_VIA_API, MERGE_REQUEST_VIA_PUSH_OPTIONS)

# Every CI/CD secret any mode reads; `required_variables` gives those of one spec.
SECRET_VARIABLES: tuple[str, ...] = (
    "DOCKERHUB_TOKEN",
    "SSH_PRIVATE_KEY",
    "SSH_KNOWN_HOSTS",
    "GITLAB_PRIVATE_TOKEN",
)

# Only the merge request API needs a token; pushes authenticate with the SSH key.
API_TOKEN_VARIABLE = "GITLAB_PRIVATE_TOKEN"
SSH_KEY_VARIABLE = "SSH_PRIVATE_KEY"

# Each deploy credential is an environment-scoped CI/CD variable (every tier), and only the
# job that needs it declares that environment: the image build, which runs the app's own
# Dockerfile, never sees either. `action: prepare` records no deployment.
ENVIRONMENT_MANIFEST = "gitops-manifest"
ENVIRONMENT_MERGE_REQUEST = "gitops-merge-request"
VARIABLE_ENVIRONMENTS: dict[str, str] = {
    SSH_KEY_VARIABLE: ENVIRONMENT_MANIFEST,
    API_TOKEN_VARIABLE: ENVIRONMENT_MERGE_REQUEST,
}
# Push options the pipeline never sends: they would merge without a person.
MERGE_PUSH_OPTIONS = ("merge_request.merge_when_pipeline_succeeds", "merge_request.auto_merge")

# Name of the dotenv report update-manifest hands to open-merge-request ("api" mode).
MANIFEST_DOTENV = "manifest.env"

# GitLab answers a push whose merge request options failed with this warning, and exit 0.
PUSH_OPTIONS_ERROR = "Error encountered with push options"

DEFAULT_BRANCH_RULE = "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
MERGE_REQUEST_RULE = '$CI_PIPELINE_SOURCE == "merge_request_event"'
IMAGE_TAG_EXPRESSION = "$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA"
BRANCH_PREFIX = "update-image-tag-"

# Every job stops after this long instead of the project's default (1 hour on gitlab.com).
JOB_TIMEOUTS: dict[str, str] = {
    JOB_BUILD: "30 minutes",
    JOB_BUILD_CHECK: "30 minutes",
    JOB_UPDATE_MANIFEST: "10 minutes",
    JOB_OPEN_MR: "5 minutes",
}

# Runner-side failures are worth a retry; script failures are not.
RUNNER_RETRY_WHEN: tuple[str, ...] = (
    "runner_system_failure",
    "stuck_or_timeout_failure",
    "api_failure",
    "scheduler_failure",
)

_NO_SPACE = re.compile(r"^\S+$")


@dataclass(frozen=True)
class PipelineSpec:
    """Installation-specific, non-secret inputs of the app project's pipeline."""

    image_repository: str
    manifest_ssh_url: str
    manifest_project_id: str
    manifest_default_branch: str = "main"
    chart_file: str = "Chart.yaml"
    bot_name: str = "gitops-bot"
    bot_email: str = "gitops-bot@users.noreply.gitlab.com"
    buildkit_image: str = "moby/buildkit:v0.27.1-rootless"
    tools_image: str = "alpine:3.23.0"
    registry_auth_url: str = "https://index.docker.io/v1/"
    network_retries: int = 3
    retry_delay_seconds: int = 5
    merge_request_via: str = MERGE_REQUEST_VIA_API
    # Runner tags for the build job, which needs a runner that allows BuildKit rootless
    # (privileged, or seccomp and AppArmor unconfined); empty: any runner.
    build_runner_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.merge_request_via not in MERGE_REQUEST_VIA:
            raise ValueError(f"merge_request_via must be one of {MERGE_REQUEST_VIA}: {self.merge_request_via!r}")
        for name in (
            "image_repository",
            "manifest_ssh_url",
            "manifest_project_id",
            "manifest_default_branch",
            "chart_file",
            "buildkit_image",
            "tools_image",
            "registry_auth_url",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NO_SPACE.match(value):
                raise ValueError(f"{name} must be a non-empty string without whitespace: {value!r}")
        if ":" in self.image_repository.rsplit("/", 1)[-1]:
            raise ValueError("image_repository must not carry a tag; the pipeline sets it")
        if not (self.manifest_ssh_url.startswith("ssh://") or re.match(r"^[^@/\s]+@[^:/\s]+:", self.manifest_ssh_url)):
            raise ValueError(f"manifest_ssh_url is not an SSH URL: {self.manifest_ssh_url!r}")
        if not self.bot_name.strip() or "@" not in self.bot_email:
            raise ValueError("bot_name and bot_email must identify the committer")
        if any(not isinstance(tag, str) or not tag.strip() for tag in self.build_runner_tags):
            raise ValueError("build_runner_tags must be non-empty strings")
        if self.network_retries < 1 or self.retry_delay_seconds < 0:
            raise ValueError("network_retries must be >= 1 and retry_delay_seconds >= 0")
        # It is spliced into a JSON document inside a printf format string.
        if any(char in self.registry_auth_url for char in "\"'%\\"):
            raise ValueError("registry_auth_url must not contain quotes, % or backslashes")


def _retry_function() -> str:
    # A bounded retry for network operations; busybox sh has no `local`.
    return (
        "retry() { attempt=1; "
        'until "$@"; do '
        'if [ "$attempt" -ge "$NETWORK_RETRIES" ]; then '
        'echo "giving up after $attempt attempts: $1 $2" >&2; return 1; fi; '
        'echo "attempt $attempt failed: $1 $2; retrying in $((attempt * RETRY_DELAY))s" >&2; '
        'sleep "$((attempt * RETRY_DELAY))"; attempt=$((attempt + 1)); '
        "done; }"
    )


def _require_tools(tools: str, packages: str) -> str:
    # Install only when missing, so the same line runs on a host that has the tools.
    checks = " || ".join(f"! command -v {tool} >/dev/null 2>&1" for tool in tools.split())
    return f"if {checks}; then retry apk add --no-cache {packages}; fi"


def _check_tag() -> str:
    # The tag lands in a sed replacement, a branch name and a URL: allow only tag characters.
    return 'case "$IMAGE_TAG" in ""|*[!A-Za-z0-9_.-]*) echo "IMAGE_TAG is not a valid image tag: $IMAGE_TAG" >&2; exit 1;; esac'


def _buildctl(push: bool) -> str:
    line = (
        "buildctl-daemonless.sh build"
        " --frontend dockerfile.v0"
        " --local context=."
        " --local dockerfile=."
        f' --output "type=image,name=${{IMAGE_REPOSITORY}}:${{IMAGE_TAG}},push={str(push).lower()}"'
        # The image records the commit it was built from, as the seed's pipeline did.
        ' --opt "build-arg:COMMIT_HASH=${CI_COMMIT_SHORT_SHA}"'
        ' --opt "label:org.opencontainers.image.revision=${CI_COMMIT_SHA}"'
    )
    if push:
        # A cache that cannot be written must not fail a build whose image is pushed.
        line += ' --export-cache "type=registry,ref=${IMAGE_REPOSITORY}:buildcache,mode=max,ignore-error=true"'
    return line + ' --import-cache "type=registry,ref=${IMAGE_REPOSITORY}:buildcache"'


def build_script(spec: PipelineSpec) -> list[str]:
    """Script lines of the image build job."""
    auth = f'{{"auths":{{"{spec.registry_auth_url}":{{"auth":"%s"}}}}}}\\n'
    return [
        _check_tag(),
        "umask 077",
        'mkdir -p "$HOME/.docker"',
        # printf is a shell builtin: the token is neither echoed nor on a process command line.
        f'printf \'{auth}\' "$DOCKERHUB_TOKEN" > "$HOME/.docker/config.json"',
        _buildctl(push=True),
    ]


def build_check_script(spec: PipelineSpec) -> list[str]:
    """Script lines of the merge-request build check: the same build, no credentials, no push."""
    return [_check_tag(), _buildctl(push=False)]


def _shared_before_script(tools: str, packages: str) -> list[str]:
    return [
        _retry_function(),
        _require_tools(tools, packages),
        _check_tag(),
        'MANIFEST_BRANCH="' + BRANCH_PREFIX + '${IMAGE_TAG}"',
        "umask 077",
        'WORK_DIR="$(mktemp -d)"',
        "trap 'rm -rf \"$WORK_DIR\"' EXIT",
    ]


def _via_api(spec: PipelineSpec) -> bool:
    return spec.merge_request_via == MERGE_REQUEST_VIA_API


def update_manifest_before_script(spec: PipelineSpec) -> list[str]:
    """before_script lines of the manifest update job (tools, helpers, SSH setup)."""
    lines = [
        *_shared_before_script("git ssh", "git openssh-client"),
        # Copies with tight modes: ssh refuses a group/world-readable key.
        'cp "$SSH_PRIVATE_KEY" "$WORK_DIR/id_key"',
        'chmod 400 "$WORK_DIR/id_key"',
        'cp "$SSH_KNOWN_HOSTS" "$WORK_DIR/known_hosts"',
        # Only the provisioned host keys count: no keyscan, no user or global files.
        (
            'export GIT_SSH_COMMAND="ssh -F /dev/null -i $WORK_DIR/id_key -o IdentitiesOnly=yes'
            " -o BatchMode=yes -o StrictHostKeyChecking=yes"
            " -o UserKnownHostsFile=$WORK_DIR/known_hosts -o GlobalKnownHostsFile=/dev/null"
            ' -o ConnectTimeout=20"'
        ),
        # Reads appVersion from a chart file, without surrounding quotes or comment.
        (
            "app_version() { sed -n -e 's/^appVersion:[[:space:]]*//p' \"$1\""
            " | sed -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//'"
            " -e 's/^\"\\(.*\\)\"$/\\1/' -e \"s/^'\\(.*\\)'$/\\1/\" | head -n 1; }"
        ),
    ]
    if _via_api(spec):
        lines += [
            # The job starts in the project directory, where artifacts are collected.
            f'DOTENV_FILE="$PWD/{MANIFEST_DOTENV}"',
            'echo "MANIFEST_MR_NEEDED=true" > "$DOTENV_FILE"',
        ]
    return lines


def _push_options_lines() -> list[str]:
    # GitLab reads these from the push and opens the merge request as the key's owner. For a
    # branch that already has an open merge request it opens no second one.
    push = (
        'retry git push --quiet --force-with-lease="refs/heads/$MANIFEST_BRANCH:$REMOTE_SHA"'
        " -o merge_request.create"
        ' -o "merge_request.target=$MANIFEST_DEFAULT_BRANCH"'
        ' -o "merge_request.title=Deploy image tag $IMAGE_TAG"'
        " -o merge_request.remove_source_branch"
        ' origin "HEAD:refs/heads/$MANIFEST_BRANCH"'
    )
    return [
        f'if ! {push} > "$WORK_DIR/push-output" 2>&1; then cat "$WORK_DIR/push-output" >&2; exit 1; fi',
        'cat "$WORK_DIR/push-output"',
        # The push itself succeeds even when GitLab could not create the merge request.
        (
            f"if grep -q '{PUSH_OPTIONS_ERROR}' \"$WORK_DIR/push-output\"; then "
            'echo "GitLab did not open the merge request for $MANIFEST_BRANCH; re-run this job" >&2; exit 1; fi'
        ),
    ]


def update_manifest_script(spec: PipelineSpec) -> list[str]:
    """Script lines that point the chart's appVersion at the new tag on a bot branch.

    With "push-options" the same push asks GitLab for the merge request.
    """
    chart = '"$WORK_DIR/manifest/$CHART_FILE"'
    via_api = _via_api(spec)
    no_mr_needed = 'echo "MANIFEST_MR_NEEDED=false" > "$DOTENV_FILE"; ' if via_api else " "
    lines = [
        ('retry git clone --quiet --depth 1 --branch "$MANIFEST_DEFAULT_BRANCH" "$MANIFEST_SSH_URL" "$WORK_DIR/manifest"'),
        'cd "$WORK_DIR/manifest"',
        f'if [ ! -f {chart} ]; then echo "$CHART_FILE not found in the manifest repository" >&2; exit 1; fi',
        # Already released on the default branch (e.g. MR merged, pipeline re-run): nothing to do.
        (
            f'if [ "$(app_version {chart})" = "$IMAGE_TAG" ]; then '
            'echo "$MANIFEST_DEFAULT_BRANCH already has appVersion $IMAGE_TAG";'
            f"{no_mr_needed}exit 0; fi"
        ),
        'retry git ls-remote --heads origin "refs/heads/$MANIFEST_BRANCH" > "$WORK_DIR/remote-branch"',
        'REMOTE_SHA="$(cut -f1 "$WORK_DIR/remote-branch")"',
    ]
    if via_api:
        # A re-run for the same tag finds the branch already pointing at it: leave it alone.
        lines.append(
            'if [ -n "$REMOTE_SHA" ]; then '
            'retry git fetch --quiet --depth 1 origin "+refs/heads/$MANIFEST_BRANCH:refs/remotes/origin/$MANIFEST_BRANCH"; '
            'git show "refs/remotes/origin/$MANIFEST_BRANCH:$CHART_FILE" > "$WORK_DIR/remote-chart"; '
            'if [ "$(app_version "$WORK_DIR/remote-chart")" = "$IMAGE_TAG" ]; then '
            'echo "$MANIFEST_BRANCH already sets appVersion $IMAGE_TAG"; exit 0; fi; fi'
        )
    # With push options a re-run pushes again (a fresh commit, so the push is not a no-op):
    # only a push carries the options, and it is the only way to ask for the merge request.
    commit = 'git commit --quiet -m "Set appVersion to $IMAGE_TAG" -m "Image: $IMAGE_REPOSITORY:$IMAGE_TAG"'
    if not via_api:
        commit += ' -m "Job: ${CI_JOB_URL:-local run}"'
    lines += [
        (
            f"if grep -q '^appVersion:' {chart}; then "
            f'sed -i "s/^appVersion:.*/appVersion: \\"$IMAGE_TAG\\"/" {chart}; '
            f'else printf \'appVersion: "%s"\\n\' "$IMAGE_TAG" >> {chart}; fi'
        ),
        # Exactly one appVersion line carrying the tag, or the edit went wrong.
        f"test \"$(grep -c '^appVersion:' {chart})\" -eq 1",
        f'test "$(app_version {chart})" = "$IMAGE_TAG"',
        'git config user.name "$BOT_NAME"',
        'git config user.email "$BOT_EMAIL"',
        f'{commit} -- "$CHART_FILE"',
    ]
    if via_api:
        # The lease only lets us replace the branch state we just saw (empty: must not exist).
        lines.append(
            'retry git push --quiet --force-with-lease="refs/heads/$MANIFEST_BRANCH:$REMOTE_SHA"'
            ' origin "HEAD:refs/heads/$MANIFEST_BRANCH"'
        )
    else:
        lines += _push_options_lines()
    lines.append('echo "Pushed $MANIFEST_BRANCH with appVersion $IMAGE_TAG"')
    return lines


def open_mr_before_script(spec: PipelineSpec) -> list[str]:
    """before_script lines of the merge request job."""
    return _shared_before_script("curl", "curl")


def open_mr_script(spec: PipelineSpec) -> list[str]:
    """Script lines that open the manifest merge request; an existing one counts as success."""
    return [
        ('if [ "${MANIFEST_MR_NEEDED:-true}" != true ]; then echo "No merge request needed for $IMAGE_TAG"; exit 0; fi'),
        # The token goes to curl through a file, never through argv or the log.
        'printf \'PRIVATE-TOKEN: %s\\n\' "$GITLAB_PRIVATE_TOKEN" > "$WORK_DIR/headers"',
        (
            'HTTP_STATUS="$(curl --silent --show-error --max-time 60 --retry 3 --retry-delay 2'
            ' --header @"$WORK_DIR/headers"'
            ' --data-urlencode "source_branch=$MANIFEST_BRANCH"'
            ' --data-urlencode "target_branch=$MANIFEST_DEFAULT_BRANCH"'
            ' --data-urlencode "title=Deploy image tag $IMAGE_TAG"'
            ' --data-urlencode "description=Sets appVersion to $IMAGE_TAG ($IMAGE_REPOSITORY:$IMAGE_TAG)."'
            ' --data "remove_source_branch=true"'
            ' --output "$WORK_DIR/response"'
            " --write-out '%{http_code}'"
            ' "$CI_API_V4_URL/projects/$MANIFEST_PROJECT_ID/merge_requests")"'
        ),
        (
            'case "$HTTP_STATUS" in '
            '201) echo "Opened a merge request for $MANIFEST_BRANCH";; '
            '409) echo "A merge request for $MANIFEST_BRANCH is already open";; '
            '*) echo "Creating the merge request failed with HTTP $HTTP_STATUS:" >&2; '
            'head -c 2000 "$WORK_DIR/response" >&2; echo >&2; exit 1;; esac'
        ),
    ]


def _runner_retry() -> dict[str, Any]:
    # A fresh dict per job keeps PyYAML from emitting anchors and aliases.
    return {"max": 2, "when": list(RUNNER_RETRY_WHEN)}


def _rules() -> list[dict[str, str]]:
    return [{"if": DEFAULT_BRANCH_RULE}]


def pipeline_variables(spec: PipelineSpec) -> dict[str, str]:
    """The pipeline's global `variables:` (non-secret values only)."""
    return {
        "IMAGE_REPOSITORY": spec.image_repository,
        "IMAGE_TAG": IMAGE_TAG_EXPRESSION,
        "MANIFEST_PROJECT_ID": spec.manifest_project_id,
        "MANIFEST_SSH_URL": spec.manifest_ssh_url,
        "MANIFEST_DEFAULT_BRANCH": spec.manifest_default_branch,
        "CHART_FILE": spec.chart_file,
        "BOT_NAME": spec.bot_name,
        "BOT_EMAIL": spec.bot_email,
        "NETWORK_RETRIES": str(spec.network_retries),
        "RETRY_DELAY": str(spec.retry_delay_seconds),
    }


def pipeline_stages(spec: PipelineSpec) -> tuple[str, ...]:
    """The pipeline's stages, in order: no merge request stage with push options."""
    return STAGES if _via_api(spec) else (STAGE_BUILD, STAGE_UPDATE_MANIFEST)


def pipeline_jobs(spec: PipelineSpec) -> tuple[str, ...]:
    """The default branch's jobs, in stage order: no merge request job with push options."""
    return JOBS if _via_api(spec) else (JOB_BUILD, JOB_UPDATE_MANIFEST)


def merge_request_jobs(spec: PipelineSpec) -> tuple[str, ...]:
    """The jobs of merge-request pipelines."""
    return (JOB_BUILD_CHECK,)


def required_variables(spec: PipelineSpec) -> tuple[str, ...]:
    """The CI/CD variables (secrets) the rendered pipeline reads; the project must define them."""
    if _via_api(spec):
        return SECRET_VARIABLES
    return tuple(name for name in SECRET_VARIABLES if name != API_TOKEN_VARIABLE)


def pipeline_document(spec: PipelineSpec) -> dict[str, Any]:
    """The `.gitlab-ci.yml` content as plain data."""
    update_manifest: dict[str, Any] = {
        "stage": STAGE_UPDATE_MANIFEST,
        "image": spec.tools_image,
        # The app sources are not needed to edit the manifest repository.
        "variables": {"GIT_STRATEGY": "none"},
        "rules": _rules(),
        # The only job that receives SSH_PRIVATE_KEY (see VARIABLE_ENVIRONMENTS).
        "environment": {"name": ENVIRONMENT_MANIFEST, "action": "prepare"},
        # Pipelines of consecutive commits must not push to the manifest at once.
        "resource_group": "manifest-update",
        "interruptible": False,
        "timeout": JOB_TIMEOUTS[JOB_UPDATE_MANIFEST],
        "retry": _runner_retry(),
        "before_script": update_manifest_before_script(spec),
        "script": update_manifest_script(spec),
    }

    # Fresh dicts and lists per job keep PyYAML from emitting anchors and aliases.
    def build_image() -> dict[str, Any]:
        return {"name": spec.buildkit_image, "entrypoint": [""]}

    def build_variables() -> dict[str, str]:
        return {"BUILDKITD_FLAGS": "--oci-worker-no-process-sandbox"}

    def runner_tags() -> dict[str, list[str]]:
        return {"tags": list(spec.build_runner_tags)} if spec.build_runner_tags else {}

    document: dict[str, Any] = {
        "stages": list(pipeline_stages(spec)),
        "variables": pipeline_variables(spec),
        JOB_BUILD: {
            "stage": STAGE_BUILD,
            "image": build_image(),
            "variables": build_variables(),
            "rules": _rules(),
            "interruptible": True,
            "timeout": JOB_TIMEOUTS[JOB_BUILD],
            "retry": _runner_retry(),
            "script": build_script(spec),
            **runner_tags(),
        },
        JOB_UPDATE_MANIFEST: update_manifest,
        JOB_BUILD_CHECK: {
            "stage": STAGE_BUILD,
            "image": build_image(),
            "variables": build_variables(),
            # Merge requests only; the job reads no CI/CD variable and pushes nothing.
            "rules": [{"if": MERGE_REQUEST_RULE}],
            "interruptible": True,
            "timeout": JOB_TIMEOUTS[JOB_BUILD_CHECK],
            "retry": _runner_retry(),
            "script": build_check_script(spec),
            **runner_tags(),
        },
    }
    if not _via_api(spec):
        return document
    update_manifest["artifacts"] = {"reports": {"dotenv": MANIFEST_DOTENV}}
    document[JOB_OPEN_MR] = {
        "stage": STAGE_OPEN_MR,
        "image": spec.tools_image,
        "variables": {"GIT_STRATEGY": "none"},
        "rules": _rules(),
        "needs": [{"job": JOB_UPDATE_MANIFEST, "artifacts": True}],
        # The only job that receives GITLAB_PRIVATE_TOKEN.
        "environment": {"name": ENVIRONMENT_MERGE_REQUEST, "action": "prepare"},
        "interruptible": False,
        "timeout": JOB_TIMEOUTS[JOB_OPEN_MR],
        "retry": _runner_retry(),
        "before_script": open_mr_before_script(spec),
        "script": open_mr_script(spec),
    }
    return document


def job_environment(spec: PipelineSpec, job: str) -> str | None:
    """The environment a job declares, which decides the scoped variables it receives."""
    environment = pipeline_document(spec)[job].get("environment")
    return environment["name"] if environment else None


def job_scripts(spec: PipelineSpec) -> dict[str, list[str]]:
    """Each job's shell lines as a runner executes them: before_script then script."""
    document = pipeline_document(spec)
    jobs = (*pipeline_jobs(spec), *merge_request_jobs(spec))
    return {job: [*document[job].get("before_script", []), *document[job]["script"]] for job in jobs}


def render_pipeline(spec: PipelineSpec) -> str:
    """The app project's `.gitlab-ci.yml` text."""
    return yaml.safe_dump(pipeline_document(spec), sort_keys=False, default_flow_style=False, width=4096)
