"""The app project's `.gitlab-ci.yml`: build the image, then propose it in one rolling merge request.

Pure module: no Pulumi, no I/O. Every value that varies between installations is
a pipeline variable, so the job scripts are constant text that can be linted and
run as-is. Secrets never appear here: they are CI/CD variables on the project
(`DOCKERHUB_TOKEN`, `SSH_PRIVATE_KEY`, `SSH_KNOWN_HOSTS`, and `GITLAB_PRIVATE_TOKEN`
when the merge request is opened through the API); see `required_variables`.

Two job starts from push to merge request: `build-image` pushes the image and records its
digest; `update-manifest` writes tag, digest and app commit into the chart on one rolling
bot branch (`DEPLOY_BRANCH`) and opens or updates that branch's single merge request:

- "api": with `GITLAB_PRIVATE_TOKEN` (a project access token, which gitlab.com Free does not offer);
- "push-options": the push itself carries `-o merge_request.create ...`, so GitLab opens (or
  updates) the merge request as the deploy key's owner and no API token is needed.

The job never proposes a build older than the one already proposed or deployed: the chart
records the app commit, and an ancestry check on the app repository decides three ways
(older: propose; newer: leave alone; unrelated or unknown: fail and ask a person).

Trust between the jobs. `build-image` and `build-check` run the app's own Dockerfile, and in
BuildKit's no-sandbox mode a `RUN` step shares the job's PID namespace and may outlive the
build, so anything those jobs can write is the app developers' input: their artifacts, their
environment, and the runner's working copy of the app (which a Docker runner keeps in a volume
for the next job of the project). `update-manifest`, which holds `SSH_PRIVATE_KEY` and
`GITLAB_PRIVATE_TOKEN`, therefore:

- takes one value from the build, the digest, as a plain artifact file (never a dotenv report,
  whose lines GitLab turns into variables that outrank the job's own, `GIT_CONFIG_*`,
  `LD_PRELOAD` and `CI_API_V4_URL` included) and accepts it only as `sha256:` and 64 hex digits;
- computes the image tag itself from `$CI_COMMIT_REF_SLUG` and `$CI_COMMIT_SHORT_SHA`;
- never uses the runner's checkout (`GIT_STRATEGY: none`): it clones the default branch's
  history into a fresh directory of its own, so no planted `.git/config` or hook runs there;
- runs no code from the app repository and reads no cache.

`build-check` runs unreviewed merge-request code, so it never carries `buildRunnerTags`: it goes
to `buildCheckRunnerTags` (default: any runner that takes untagged jobs), and `update-manifest`
to `deployRunnerTags`; no list may be a subset of another. The build and deploy runners should be
protected runners that take no untagged jobs (README, "Security model").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from components.chart import COMMIT_ANNOTATION, DIGEST_ANNOTATION

STAGE_BUILD = "build"
STAGE_UPDATE_MANIFEST = "update-manifest"
STAGES: tuple[str, ...] = (STAGE_BUILD, STAGE_UPDATE_MANIFEST)

JOB_BUILD = "build-image"
# Merge-request pipelines: build the image to catch a broken Dockerfile before merge; push nothing.
JOB_BUILD_CHECK = "build-check"
# Bumps the chart on the deploy branch and opens or updates its merge request, in both modes.
JOB_UPDATE_MANIFEST = "update-manifest"
JOBS: tuple[str, ...] = (JOB_BUILD, JOB_UPDATE_MANIFEST)

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
# job that needs them declares that environment: the image build, which runs the app's own
# Dockerfile, never sees either. `action: prepare` records no deployment.
ENVIRONMENT_MANIFEST = "gitops-manifest"
VARIABLE_ENVIRONMENTS: dict[str, str] = {
    SSH_KEY_VARIABLE: ENVIRONMENT_MANIFEST,
    API_TOKEN_VARIABLE: ENVIRONMENT_MANIFEST,
}
# Push options the pipeline never sends: they would merge without a person.
MERGE_PUSH_OPTIONS = ("merge_request.merge_when_pipeline_succeeds", "merge_request.auto_merge")

# The artifact file build-image hands to update-manifest: the digest it pushed, one line. A plain
# file, not a dotenv report, so no line of it becomes a variable of the job holding the deploy key.
DIGEST_FILE = "gitops-image-digest"
# Its exact size: "sha256:", 64 hex digits and a newline.
DIGEST_FILE_BYTES = 72

# GitLab answers a push whose merge request options failed with this warning, and exit 0.
PUSH_OPTIONS_ERROR = "Error encountered with push options"

DEFAULT_BRANCH_RULE = "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
MERGE_REQUEST_RULE = '$CI_PIPELINE_SOURCE == "merge_request_event"'
IMAGE_TAG_EXPRESSION = "$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA"
# The layer cache: the app project's own GitLab registry, never the (possibly public) image repository.
DEFAULT_CACHE_REPOSITORY = "$CI_REGISTRY_IMAGE/buildcache"
# buildCacheRepository's value for "build without a layer cache".
CACHE_OFF = "off"

# Pinned by digest: a tag can be re-pushed, a digest cannot. Renovate-style "tag@digest" keeps
# the version readable.
BUILDKIT_IMAGE = "moby/buildkit:v0.33.0-rootless@sha256:80b15f0735e87bab7bf59ec4d695dfb4a7cfb25521cf56dc75d6f256285b63ef"
# A Docker Official Image with git, ssh and curl: the manifest job installs nothing at run time.
TOOLS_IMAGE = "buildpack-deps:bookworm-scm@sha256:b42f74a50a22540b839042134919504ff7c51e7cf8d751b79d0f94c56566cb92"

# Every job stops after this long instead of the project's default (1 hour on gitlab.com).
JOB_TIMEOUTS: dict[str, str] = {
    JOB_BUILD: "30 minutes",
    JOB_BUILD_CHECK: "30 minutes",
    JOB_UPDATE_MANIFEST: "10 minutes",
}

# Runner-side failures are worth a retry; script failures are not.
RUNNER_RETRY_WHEN: tuple[str, ...] = (
    "runner_system_failure",
    "stuck_or_timeout_failure",
    "api_failure",
    "scheduler_failure",
)

_NO_SPACE = re.compile(r"^\S+$")
_PINNED_IMAGE = re.compile(r"^\S+@sha256:[0-9a-f]{64}$")
# '+' joins stack and app in a multi-app stack's branch names (apps.APP_SEPARATOR).
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")


# The jobs' runner tags, by the role of the runners they select.
RUNNER_TAG_ROLES = ("build_runner_tags", "build_check_runner_tags", "deploy_runner_tags")
# (a job's tags, other runners' tags) that must not meet: unreviewed code on the build or deploy
# runners, builds on the deploy runners, the deploy job on the build runners.
_KEPT_APART = (
    ("build_check_runner_tags", "build_runner_tags"),
    ("build_check_runner_tags", "deploy_runner_tags"),
    ("build_runner_tags", "deploy_runner_tags"),
    ("deploy_runner_tags", "build_runner_tags"),
)


def runner_tag_conflicts(build: tuple[str, ...], check: tuple[str, ...], deploy: tuple[str, ...]) -> list[tuple[str, str]]:
    """(job role, runner role) pairs where every runner of the second role would take the first's job.

    A runner takes every job whose tags are a subset of its own (gitlab-org/gitlab-ce#47387), so a
    job's non-empty tags that are a subset of the other role's tags reach those runners.
    """
    tags = dict(zip(RUNNER_TAG_ROLES, (build, check, deploy), strict=True))
    return [(job, runner) for job, runner in _KEPT_APART if tags[job] and set(tags[job]) <= set(tags[runner])]


@dataclass(frozen=True)
class PipelineSpec:
    """Installation-specific, non-secret inputs of the app project's pipeline."""

    image_repository: str
    manifest_ssh_url: str
    manifest_project_id: str
    manifest_default_branch: str = "main"
    chart_file: str = "Chart.yaml"
    # The one bot branch whose single merge request proposes the newest build.
    deploy_branch: str = "gitops-deploy"
    # Where BuildKit keeps its layer cache; "" means the app project's GitLab registry, "off" none.
    cache_repository: str = ""
    bot_name: str = "gitops-bot"
    bot_email: str = "gitops-bot@users.noreply.gitlab.com"
    buildkit_image: str = BUILDKIT_IMAGE
    tools_image: str = TOOLS_IMAGE
    registry_auth_url: str = "https://index.docker.io/v1/"
    network_retries: int = 3
    retry_delay_seconds: int = 5
    merge_request_via: str = MERGE_REQUEST_VIA_API
    # Runner tags for the build job, which needs a runner that allows BuildKit rootless
    # (privileged, or seccomp and AppArmor unconfined); empty: any runner.
    build_runner_tags: tuple[str, ...] = ()
    # Runner tags for the merge-request build check, which runs unreviewed code: never the build
    # job's (a runner takes every job whose tags are a subset of its own); empty: untagged.
    build_check_runner_tags: tuple[str, ...] = ()
    # Runner tags for update-manifest, which holds the deploy credentials: runners that run no
    # build; empty: untagged (then shared with build-check unless that has tags of its own).
    deploy_runner_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.merge_request_via not in MERGE_REQUEST_VIA:
            raise ValueError(f"merge_request_via must be one of {MERGE_REQUEST_VIA}: {self.merge_request_via!r}")
        for name in (
            "image_repository",
            "manifest_ssh_url",
            "manifest_project_id",
            "manifest_default_branch",
            "chart_file",
            "deploy_branch",
            "buildkit_image",
            "tools_image",
            "registry_auth_url",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NO_SPACE.match(value):
                raise ValueError(f"{name} must be a non-empty string without whitespace: {value!r}")
        if ":" in self.image_repository.rsplit("/", 1)[-1]:
            raise ValueError("image_repository must not carry a tag; the pipeline sets it")
        if self.cache_repository and (not _NO_SPACE.match(self.cache_repository) or "@" in self.cache_repository):
            raise ValueError(f"cache_repository must be an image repository: {self.cache_repository!r}")
        for name in ("buildkit_image", "tools_image"):
            if not _PINNED_IMAGE.match(getattr(self, name)):
                raise ValueError(f"{name} must be pinned by digest (name:tag@sha256:<64 hex>): {getattr(self, name)!r}")
        if not _BRANCH.match(self.deploy_branch) or self.deploy_branch == self.manifest_default_branch:
            raise ValueError(f"deploy_branch must be a plain branch name other than the default branch: {self.deploy_branch!r}")
        if not (self.manifest_ssh_url.startswith("ssh://") or re.match(r"^[^@/\s]+@[^:/\s]+:", self.manifest_ssh_url)):
            raise ValueError(f"manifest_ssh_url is not an SSH URL: {self.manifest_ssh_url!r}")
        if not self.bot_name.strip() or "@" not in self.bot_email:
            raise ValueError("bot_name and bot_email must identify the committer")
        for name in RUNNER_TAG_ROLES:
            if any(not isinstance(tag, str) or not tag.strip() for tag in getattr(self, name)):
                raise ValueError(f"{name} must be non-empty strings")
        for job, runner in runner_tag_conflicts(self.build_runner_tags, self.build_check_runner_tags, self.deploy_runner_tags):
            raise ValueError(f"{job} must not be a subset of {runner}: those runners would take that job")
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


def _check_tag() -> str:
    # The tag lands in the chart, a commit message and a URL: allow only tag characters.
    return 'case "$IMAGE_TAG" in ""|*[!A-Za-z0-9_.-]*) echo "IMAGE_TAG is not a valid image tag: $IMAGE_TAG" >&2; exit 1;; esac'


def _digest_checks(on_bad: str) -> str:
    # IMAGE_DIGEST must be `sha256:` and 64 lowercase hex digits; ``on_bad`` runs (and exits) otherwise.
    return (
        'case "$IMAGE_DIGEST" in sha256:*) DIGEST_HEX="${IMAGE_DIGEST#sha256:}";; *) DIGEST_HEX=x;; esac; '
        'case "$DIGEST_HEX" in *[!0-9a-f]*) DIGEST_HEX=x;; esac; '
        f'if [ "${{#DIGEST_HEX}}" -ne 64 ]; then {on_bad}; fi'
    )


def _check_digest() -> str:
    # The digest the build job read from BuildKit's metadata file; the chart deploys exactly this.
    return _digest_checks('echo "IMAGE_DIGEST is missing or not a sha256 digest: \\"$IMAGE_DIGEST\\"" >&2; exit 1')


def _read_digest() -> str:
    # The build's artifact is the app developers' input: a regular file (a symlink could point at
    # this job's key file) of exactly one line, `sha256:` and 64 lowercase hex digits. Anything else
    # fails the job; the bad value is shown only as printable characters. Relative: the job starts in
    # the project directory, where GitLab puts the artifacts (as the build job writes it).
    where = f"./{DIGEST_FILE}"
    bad = f'echo "{DIGEST_FILE} from {JOB_BUILD}'
    shown = f"$(head -c {DIGEST_FILE_BYTES} \"{where}\" | tr -c '[:alnum:]:=_.-' '?')"
    return (
        f'if [ -L "{where}" ] || [ ! -f "{where}" ]; then {bad} is missing or not a regular file;'
        ' re-run the pipeline" >&2; exit 1; fi; '
        f'DIGEST_BYTES="$(wc -c < "{where}" | tr -dc 0-9)"; '
        f'if [ "$DIGEST_BYTES" != {DIGEST_FILE_BYTES} ]; then {bad} has $DIGEST_BYTES bytes, not {DIGEST_FILE_BYTES}'
        ' (one line: sha256: and 64 hex digits)" >&2; exit 1; fi; '
        f'IMAGE_DIGEST="$(head -n 1 "{where}")"; '
        + _digest_checks(f'{bad} is not sha256: and 64 hex digits: \\"{shown}\\"" >&2; exit 1')
    )


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
        # The metadata file names the digest the registry stored; the chart deploys that.
        line += ' --metadata-file "$METADATA_FILE" "$@"'
    return line


def build_script(spec: PipelineSpec) -> list[str]:
    """Script lines of the image build job: build, push, and report the pushed digest."""
    return [
        _check_tag(),
        "umask 077",
        'mkdir -p "$HOME/.docker"',
        # printf is a shell builtin: no token is echoed or on a process command line.
        f'printf \'{{"auths":{{"{spec.registry_auth_url}":{{"auth":"%s"}}\' "$DOCKERHUB_TOKEN" > "$HOME/.docker/config.json"',
        # The job token may push to the project's own registry, where the layer cache lives.
        (
            'if [ -n "${CI_REGISTRY:-}" ] && [ -n "${CI_REGISTRY_PASSWORD:-}" ]; then '
            'printf \',"%s":{"auth":"%s"}\' "$CI_REGISTRY" '
            '"$(printf \'%s:%s\' "$CI_REGISTRY_USER" "$CI_REGISTRY_PASSWORD" | base64 | tr -d \'\\n\')"'
            ' >> "$HOME/.docker/config.json"; fi'
        ),
        "printf '}}\\n' >> \"$HOME/.docker/config.json\"",
        # No registry (CI_REGISTRY_IMAGE empty) or cache turned off: build without a cache.
        (
            'case "$CACHE_REPOSITORY" in ""|/*) set --; echo "No cache repository; building without a layer cache";; '
            '*) set -- --export-cache "type=registry,ref=$CACHE_REPOSITORY,mode=max,ignore-error=true"'
            ' --import-cache "type=registry,ref=$CACHE_REPOSITORY";; esac'
        ),
        'METADATA_FILE="$(mktemp)"',
        _buildctl(push=True),
        # sed, not grep: no match is no error, so the check below explains a missing digest.
        (
            'IMAGE_DIGEST="$(sed -n \'s/.*"containerimage.digest": *"\\(sha256:[0-9a-f]*\\)".*/\\1/p\''
            ' "$METADATA_FILE" | head -n 1)"'
        ),
        _check_digest(),
        # Relative: the job runs in the project directory, where GitLab collects artifacts. Not a
        # secret, and readable by a helper that uploads as another user (umask 077 above).
        f"printf '%s\\n' \"$IMAGE_DIGEST\" > {DIGEST_FILE}",
        f"chmod 644 {DIGEST_FILE}",
        'echo "Pushed $IMAGE_REPOSITORY:$IMAGE_TAG@$IMAGE_DIGEST"',
    ]


def build_check_script(spec: PipelineSpec) -> list[str]:
    """Script lines of the merge-request build check: the same build, no credentials, no cache, no push."""
    return [_check_tag(), _buildctl(push=False)]


def _via_api(spec: PipelineSpec) -> bool:
    return spec.merge_request_via == MERGE_REQUEST_VIA_API


def _annotation_pattern(key: str) -> str:
    # A sed/grep basic regex for an indented annotation key (its `/` is literal with `|` delimiters).
    return "[[:space:]][[:space:]]*" + key.replace(".", "\\.")


def chart_helpers() -> list[str]:
    """Shell helpers that read the chart fields the pipeline owns (appVersion and its annotations)."""
    return [
        # chart_field PATTERN FILE: a top-level or annotation value, without quotes or comment.
        (
            'chart_field() { sed -n -e "s|^$1:[[:space:]]*||p" "$2"'
            " | sed -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//'"
            " -e 's/^\"\\(.*\\)\"$/\\1/' -e \"s/^'\\(.*\\)'$/\\1/\" | head -n 1; }"
        ),
        f"COMMIT_FIELD='{_annotation_pattern(COMMIT_ANNOTATION)}'",
        f"DIGEST_FIELD='{_annotation_pattern(DIGEST_ANNOTATION)}'",
    ]


def _clone_app_history() -> list[str]:
    # The default branch's history, fetched by this job into a directory of its own: the runner's
    # checkout may hold a `.git/config` or hooks that a build left there, and git runs those. Bare,
    # one branch, no tags: a commit rewritten away but still tagged is not history.
    return [
        # The job token as the credential, from the environment when git asks: with the runner's
        # FF_GIT_URLS_WITHOUT_TOKENS, CI_REPOSITORY_URL carries none, and under GIT_STRATEGY none
        # the runner sets up no helper (gitlab-runner !6729). Any other helper is cleared first.
        (
            'set -- -c credential.helper= -c "credential.helper=!f() { echo username=gitlab-ci-token;'
            ' echo \\"password=\\$CI_JOB_TOKEN\\"; }; f"'
        ),
        # A self-managed GitLab with its own CA: the runner hands the job that CA as a file.
        'if [ -n "${CI_SERVER_TLS_CA_FILE:-}" ]; then set -- "$@" -c "http.sslCAInfo=$CI_SERVER_TLS_CA_FILE"; fi',
        'APP_GIT="$WORK_DIR/app.git"',
        (
            'retry git "$@" clone --quiet --bare --single-branch --no-tags --branch "$CI_DEFAULT_BRANCH"'
            ' "$CI_REPOSITORY_URL" "$APP_GIT"'
        ),
        'APP_HEAD="$(git --git-dir "$APP_GIT" rev-parse --verify "refs/heads/$CI_DEFAULT_BRANCH^{commit}")"',
        (
            'if ! git --git-dir "$APP_GIT" merge-base --is-ancestor "$CI_COMMIT_SHA" "$APP_HEAD"; then'
            ' echo "$CI_COMMIT_SHA is no longer on $CI_DEFAULT_BRANCH (its history was rewritten); nothing to propose" >&2;'
            " exit 1; fi"
        ),
    ]


def ancestry_helpers() -> list[str]:
    """Shell helpers that decide, on the app history in "$APP_GIT", whether this build is newer than a recorded one."""
    return [_newer_than()]


def _newer_than() -> str:
    # newer_than COMMIT WHERE: succeeds if this pipeline's commit descends from COMMIT (the one
    # WHERE already carries); fails quietly if COMMIT descends from it (a newer build is there);
    # stops the job for anything else (a commit not in the default branch's history, or one
    # that is neither): only a person can tell which build should run.
    unrelated = (
        f"on $DEPLOY_BRANCH, delete the branch; on $MANIFEST_DEFAULT_BRANCH, set {COMMIT_ANNOTATION} in $CHART_FILE"
        " to a commit of the default branch through a merge request; then re-run this job"
    )
    return (
        'newer_than() { if [ -z "$1" ]; then return 0; fi; '
        # Only a full commit id, never a revision expression such as `main` or `:/text`.
        'case "$1" in *[!0-9a-f]*) RECORDED=bad;; *) RECORDED="$1";; esac; '
        'if [ "$RECORDED" = bad ] || { [ "${#1}" -ne 40 ] && [ "${#1}" -ne 64 ]; }; then '
        "echo \"$2 records app commit \\\"$(printf '%s' \"$1\" | tr -c '[:alnum:]._-' '?' | head -c 80)\\\","
        f' which is not a commit id; {unrelated}" >&2; exit 1; fi; '
        'if [ "$1" = "$CI_COMMIT_SHA" ]; then echo "$2 already carries $CI_COMMIT_SHA"; return 1; fi; '
        'if ! git --git-dir "$APP_GIT" cat-file -e "$1^{commit}" 2>/dev/null'
        ' || ! git --git-dir "$APP_GIT" merge-base --is-ancestor "$1" "$APP_HEAD"; then '
        f'echo "$2 carries app commit $1, which is not in the default branch history (rewritten or from elsewhere); {unrelated}"'
        " >&2; exit 1; fi; "
        'if git --git-dir "$APP_GIT" merge-base --is-ancestor "$1" "$CI_COMMIT_SHA"; then return 0; fi; '
        'if git --git-dir "$APP_GIT" merge-base --is-ancestor "$CI_COMMIT_SHA" "$1"; then '
        'echo "$2 carries app commit $1, which is newer than $CI_COMMIT_SHA: leaving it alone"; return 1; fi; '
        f'echo "$2 carries app commit $1, which is neither older nor newer than $CI_COMMIT_SHA; {unrelated}" >&2; exit 1; }}'
    )


def update_manifest_before_script(spec: PipelineSpec) -> list[str]:
    """before_script lines of the deploy job: checks, helpers, the SSH setup and the app's history."""
    return [
        _retry_function(),
        'case "$CI_COMMIT_SHA" in ""|*[!0-9a-f]*) echo "CI_COMMIT_SHA is not a commit id: $CI_COMMIT_SHA" >&2; exit 1;; esac',
        # The tag this job computes itself, from predefined variables only.
        'IMAGE_TAG="$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA"',
        _check_tag(),
        _read_digest(),
        "umask 077",
        'WORK_DIR="$(mktemp -d)"',
        "trap 'rm -rf \"$WORK_DIR\"' EXIT",
        # Nothing below reads the runner's working directory again.
        'cd "$WORK_DIR"',
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
        *chart_helpers(),
        *_clone_app_history(),
        *ancestry_helpers(),
    ]


def _check_annotations_line() -> str:
    # The rewrite below handles one block-style `annotations:` map indented by two spaces, with
    # the pipeline's keys unquoted. Anything else (flow style, other indentation, quoted keys)
    # could come out as invalid or duplicate YAML, so the job stops instead of guessing.
    program = (
        "/^annotations:/ { n++; if ($0 !~ /^annotations:[[:space:]]*$/) bad = 1; inside = 1; next }; "
        "inside && /^[^[:space:]#]/ { inside = 0 }; "
        "inside && NF && $0 !~ /^  [^[:space:]]/ && $0 !~ /^[[:space:]]*#/ { bad = 1 }; "
        "/gitops-bootstrap\\/(image-digest|app-commit)/ && $0 !~ /^  gitops-bootstrap\\/(image-digest|app-commit):/"
        " && $0 !~ /^[[:space:]]*#/ { bad = 1 }; "
        "END { exit (bad || n > 1) }"
    )
    return (
        f'awk \'{program}\' "$CHART" || {{ echo "$CHART_FILE: the pipeline writes into one block-style'
        " 'annotations:' map indented by two spaces; reformat this chart's annotations that way (see the"
        ' starter chart)" >&2; exit 1; }'
    )


def _set_release_line() -> str:
    # One awk pass rewrites appVersion and the two annotations, adding any that are missing
    # (a chart seeded by an older version has no annotations).
    program = (
        'function notes() { print "  " dkey ": \\"" digest "\\""; print "  " ckey ": \\"" commit "\\"" }; '
        '/^appVersion:/ { if (!v) print "appVersion: \\"" tag "\\""; v = 1; next }; '
        "/^annotations:[[:space:]]*$/ { print; notes(); a = 1; next }; "
        'index($0, "  " dkey ":") == 1 || index($0, "  " ckey ":") == 1 { next }; '
        "{ print }; "
        'END { if (!v) print "appVersion: \\"" tag "\\""; if (!a) { print "annotations:"; notes() } }'
    )
    return (
        'awk -v tag="$IMAGE_TAG" -v digest="$IMAGE_DIGEST" -v commit="$CI_COMMIT_SHA"'
        f" -v dkey='{DIGEST_ANNOTATION}' -v ckey='{COMMIT_ANNOTATION}'"
        f' \'{program}\' "$CHART" > "$WORK_DIR/Chart.new"'
    )


def release_lines() -> list[str]:
    """Lines that write this build (tag, digest, app commit) into "$CHART" and check the result."""
    return [
        _check_annotations_line(),
        _set_release_line(),
        'mv "$WORK_DIR/Chart.new" "$CHART"',
        # Exactly one line of each, carrying this build, or the edit went wrong.
        'test "$(grep -c \'^appVersion:\' "$CHART")" -eq 1',
        'test "$(grep -c "^$COMMIT_FIELD:" "$CHART")" -eq 1',
        'test "$(grep -c "^$DIGEST_FIELD:" "$CHART")" -eq 1',
        'test "$(chart_field appVersion "$CHART")" = "$IMAGE_TAG"',
        'test "$(chart_field "$DIGEST_FIELD" "$CHART")" = "$IMAGE_DIGEST"',
        'test "$(chart_field "$COMMIT_FIELD" "$CHART")" = "$CI_COMMIT_SHA"',
    ]


def _rollback_function() -> str:
    # When the merge request step fails after this job's push (PUSHED_SHA), the branch goes back
    # to what it was (or away), so that a re-run proposes again.
    return (
        # An empty REMOTE_SHA pushes ":refs/heads/...", which deletes the branch.
        'rollback() { if [ -z "$PUSHED_SHA" ]; then exit 1; fi; '
        'if git push --quiet --force-with-lease="refs/heads/$DEPLOY_BRANCH:$PUSHED_SHA"'
        ' origin "$REMOTE_SHA:refs/heads/$DEPLOY_BRANCH"; then'
        ' echo "Put $DEPLOY_BRANCH back as it was; re-run this job" >&2;'
        ' else echo "Could not put $DEPLOY_BRANCH back; delete it before re-running this job" >&2; fi; exit 1; }'
    )


def _push_options_lines() -> list[str]:
    # GitLab reads these from the push and opens the merge request as the key's owner; for a
    # branch with an open merge request it updates that one (title) instead of opening another.
    push = (
        'retry git push --quiet --force-with-lease="refs/heads/$DEPLOY_BRANCH:$REMOTE_SHA"'
        " -o merge_request.create"
        ' -o "merge_request.target=$MANIFEST_DEFAULT_BRANCH"'
        ' -o "merge_request.title=Deploy $IMAGE_TAG"'
        " -o merge_request.remove_source_branch"
        ' origin "HEAD:refs/heads/$DEPLOY_BRANCH"'
    )
    return [
        f'if ! {push} > "$WORK_DIR/push-output" 2>&1; then cat "$WORK_DIR/push-output" >&2; exit 1; fi',
        'cat "$WORK_DIR/push-output"',
        'PUSHED_SHA="$(git rev-parse HEAD)"',
        # The push itself succeeds even when GitLab could not create the merge request.
        (
            f"if grep -q '{PUSH_OPTIONS_ERROR}' \"$WORK_DIR/push-output\"; then "
            'echo "GitLab did not open the merge request for $DEPLOY_BRANCH" >&2; rollback; fi'
        ),
    ]


def _api_lines() -> list[str]:
    # The token goes to curl through a file, never through argv or the log. A transport error
    # counts as status 000, so that it too puts the branch back.
    mr_url = "$CI_API_V4_URL/projects/$MANIFEST_PROJECT_ID/merge_requests"
    return [
        'printf \'PRIVATE-TOKEN: %s\\n\' "$GITLAB_PRIVATE_TOKEN" > "$WORK_DIR/headers"',
        (
            # A self-managed GitLab with its own CA: the runner hands the job that CA as a file.
            'mr_api() { if [ -n "${CI_SERVER_TLS_CA_FILE:-}" ]; then set -- --cacert "$CI_SERVER_TLS_CA_FILE" "$@"; fi;'
            " curl --silent --show-error --max-time 60 --retry 3 --retry-delay 2"
            ' --header @"$WORK_DIR/headers" --output "$WORK_DIR/response" --write-out \'%{http_code}\' "$@"'
            # curl writes 000 itself when it reaches no server.
            " || true; }"
        ),
        # No response file when no server answered; errexit must not skip the rollback.
        (
            'mr_failed() { echo "$1 failed with HTTP $2:" >&2; head -c 2000 "$WORK_DIR/response" >&2 2>/dev/null || :;'
            " echo >&2; rollback; }"
        ),
        'TITLE="Deploy $IMAGE_TAG"',
        (
            'DESCRIPTION="Deploys $IMAGE_REPOSITORY:$IMAGE_TAG@$IMAGE_DIGEST, built from $CI_COMMIT_SHA.'
            ' A newer build of the default branch updates this merge request."'
        ),
        # Creates the branch's merge request; 409 means one is open already, which gets this
        # build's title and description. Running it twice changes nothing.
        (
            "ensure_mr() { "
            'HTTP_STATUS="$(mr_api --data-urlencode "source_branch=$DEPLOY_BRANCH"'
            ' --data-urlencode "target_branch=$MANIFEST_DEFAULT_BRANCH"'
            ' --data-urlencode "title=$TITLE" --data-urlencode "description=$DESCRIPTION"'
            f' --data "remove_source_branch=true" "{mr_url}")"; '
            'case "$HTTP_STATUS" in '
            '201) echo "Opened a merge request for $DEPLOY_BRANCH";; '
            "409) "
            f'HTTP_STATUS="$(mr_api --get --data-urlencode "source_branch=$DEPLOY_BRANCH" --data "state=opened" "{mr_url}")"; '
            'if [ "$HTTP_STATUS" != 200 ]; then mr_failed "Finding the open merge request" "$HTTP_STATUS"; fi; '
            'MR_IID="$(grep -o \'"iid": *[0-9]*\' "$WORK_DIR/response" | head -n 1 | tr -dc 0-9)"; '
            'if [ -z "$MR_IID" ]; then mr_failed "Finding the open merge request" "$HTTP_STATUS"; fi; '
            'HTTP_STATUS="$(mr_api --request PUT --data-urlencode "title=$TITLE"'
            f' --data-urlencode "description=$DESCRIPTION" "{mr_url}/$MR_IID")"; '
            'if [ "$HTTP_STATUS" != 200 ]; then mr_failed "Updating merge request !$MR_IID" "$HTTP_STATUS"; fi; '
            'echo "Merge request !$MR_IID for $DEPLOY_BRANCH proposes $IMAGE_TAG";; '
            '*) mr_failed "Creating the merge request" "$HTTP_STATUS";; esac; }'
        ),
    ]


def update_manifest_script(spec: PipelineSpec) -> list[str]:
    """Script lines that propose this build on the deploy branch and open or update its merge request."""
    lines = [
        'retry git clone --quiet --depth 1 --branch "$MANIFEST_DEFAULT_BRANCH" "$MANIFEST_SSH_URL" "$WORK_DIR/manifest"',
        'cd "$WORK_DIR/manifest"',
        'CHART="$WORK_DIR/manifest/$CHART_FILE"',
        'if [ ! -f "$CHART" ]; then echo "$CHART_FILE not found in the manifest repository" >&2; exit 1; fi',
        # Deployed already, or something newer is: nothing to propose.
        'if ! newer_than "$(chart_field "$COMMIT_FIELD" "$CHART")" "$MANIFEST_DEFAULT_BRANCH"; then exit 0; fi',
        # ls-remote matches ref name tails (x/refs/heads/<branch> too): keep the exact ref only.
        'retry git ls-remote --heads origin "refs/heads/$DEPLOY_BRANCH" > "$WORK_DIR/remote-branch"',
        'REMOTE_SHA="$(awk -v ref="refs/heads/$DEPLOY_BRANCH" \'$2 == ref { print $1 }\' "$WORK_DIR/remote-branch")"',
        'PUSHED_SHA=""',
        _rollback_function(),
        *(_api_lines() if _via_api(spec) else []),
        # What the deploy branch proposes now: the same build (a re-run) changes nothing, a newer
        # one is left alone, the same commit with a new digest (a rebuild) is updated.
        (
            'if [ -n "$REMOTE_SHA" ]; then '
            'retry git fetch --quiet --depth 1 origin "+refs/heads/$DEPLOY_BRANCH:refs/remotes/origin/$DEPLOY_BRANCH"; '
            'git show "refs/remotes/origin/$DEPLOY_BRANCH:$CHART_FILE" > "$WORK_DIR/proposed" 2>/dev/null'
            ' || : > "$WORK_DIR/proposed"; '
            'PROPOSED_COMMIT="$(chart_field "$COMMIT_FIELD" "$WORK_DIR/proposed")"; '
            'PROPOSED_DIGEST="$(chart_field "$DIGEST_FIELD" "$WORK_DIR/proposed")"; '
            'if [ "$PROPOSED_COMMIT" = "$CI_COMMIT_SHA" ] && [ "$PROPOSED_DIGEST" = "$IMAGE_DIGEST" ]; then '
            'echo "$DEPLOY_BRANCH already proposes $IMAGE_TAG@$IMAGE_DIGEST"; '
            # A job cancelled between its push and its API call left no merge request: ask again.
            f"{'ensure_mr; ' if _via_api(spec) else ''}exit 0; fi; "
            'if [ "$PROPOSED_COMMIT" != "$CI_COMMIT_SHA" ] && ! newer_than "$PROPOSED_COMMIT" "$DEPLOY_BRANCH"; then exit 0; fi; '
            "fi"
        ),
        *release_lines(),
        'git config user.name "$BOT_NAME"',
        'git config user.email "$BOT_EMAIL"',
        (
            'git commit --quiet -m "Deploy $IMAGE_TAG" -m "Image: $IMAGE_REPOSITORY:$IMAGE_TAG@$IMAGE_DIGEST"'
            ' -m "App commit: $CI_COMMIT_SHA" -m "Job: ${CI_JOB_URL:-local run}" -- "$CHART_FILE"'
        ),
    ]
    if _via_api(spec):
        # The lease only replaces the branch state just read (empty: it must not exist yet), so
        # a concurrent writer is never overwritten; resource_group keeps pipelines in line anyway.
        lines += [
            'retry git push --quiet --force-with-lease="refs/heads/$DEPLOY_BRANCH:$REMOTE_SHA"'
            ' origin "HEAD:refs/heads/$DEPLOY_BRANCH"',
            'PUSHED_SHA="$(git rev-parse HEAD)"',
            "ensure_mr",
        ]
    else:
        lines += _push_options_lines()
    lines.append('echo "$DEPLOY_BRANCH proposes $IMAGE_REPOSITORY:$IMAGE_TAG@$IMAGE_DIGEST"')
    return lines


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
        # Empty turns the cache off (the build job checks).
        "CACHE_REPOSITORY": {"": DEFAULT_CACHE_REPOSITORY, CACHE_OFF: ""}.get(spec.cache_repository, spec.cache_repository),
        "MANIFEST_PROJECT_ID": spec.manifest_project_id,
        "MANIFEST_SSH_URL": spec.manifest_ssh_url,
        "MANIFEST_DEFAULT_BRANCH": spec.manifest_default_branch,
        "DEPLOY_BRANCH": spec.deploy_branch,
        "CHART_FILE": spec.chart_file,
        "BOT_NAME": spec.bot_name,
        "BOT_EMAIL": spec.bot_email,
        "NETWORK_RETRIES": str(spec.network_retries),
        "RETRY_DELAY": str(spec.retry_delay_seconds),
    }


def pipeline_stages(spec: PipelineSpec) -> tuple[str, ...]:
    """The pipeline's stages, in order (the same in both modes)."""
    return STAGES


def pipeline_jobs(spec: PipelineSpec) -> tuple[str, ...]:
    """The default branch's jobs, in stage order: two job starts from push to merge request."""
    return JOBS


def merge_request_jobs(spec: PipelineSpec) -> tuple[str, ...]:
    """The jobs of merge-request pipelines."""
    return (JOB_BUILD_CHECK,)


def required_variables(spec: PipelineSpec) -> tuple[str, ...]:
    """The CI/CD variables (secrets) the rendered pipeline reads; the project must define them."""
    if _via_api(spec):
        return SECRET_VARIABLES
    return tuple(name for name in SECRET_VARIABLES if name != API_TOKEN_VARIABLE)


def pipeline_images(spec: PipelineSpec) -> tuple[str, ...]:
    """Every image the pipeline's jobs run in."""
    return (spec.buildkit_image, spec.tools_image)


def pipeline_document(spec: PipelineSpec) -> dict[str, Any]:
    """The `.gitlab-ci.yml` content as plain data."""

    # Fresh dicts and lists per job keep PyYAML from emitting anchors and aliases.
    def build_image() -> dict[str, Any]:
        return {"name": spec.buildkit_image, "entrypoint": [""]}

    def build_variables() -> dict[str, str]:
        return {"BUILDKITD_FLAGS": "--oci-worker-no-process-sandbox"}

    def runner_tags(tags: tuple[str, ...]) -> dict[str, list[str]]:
        return {"tags": list(tags)} if tags else {}

    return {
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
            # The digest it pushed, for update-manifest: a plain file, never a dotenv report.
            "artifacts": {"paths": [DIGEST_FILE]},
            **runner_tags(spec.build_runner_tags),
        },
        JOB_UPDATE_MANIFEST: {
            "stage": STAGE_UPDATE_MANIFEST,
            "image": spec.tools_image,
            # No checkout: the job clones the app's history itself (_clone_app_history).
            "variables": {"GIT_STRATEGY": "none"},
            "rules": _rules(),
            "needs": [{"job": JOB_BUILD, "artifacts": True}],
            # The only job that receives SSH_PRIVATE_KEY and GITLAB_PRIVATE_TOKEN (VARIABLE_ENVIRONMENTS).
            "environment": {"name": ENVIRONMENT_MANIFEST, "action": "prepare"},
            # Two pipelines never write the deploy branch at once (one at a time, in no set order:
            # the ancestry check decides which build stays).
            "resource_group": "manifest-update",
            "interruptible": False,
            "timeout": JOB_TIMEOUTS[JOB_UPDATE_MANIFEST],
            "retry": _runner_retry(),
            "before_script": update_manifest_before_script(spec),
            "script": update_manifest_script(spec),
            # Runners that run no build (deployRunnerTags, README "Security model").
            **runner_tags(spec.deploy_runner_tags),
        },
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
            # Unreviewed code: never on the build runners (buildCheckRunnerTags, README "Security model").
            **runner_tags(spec.build_check_runner_tags),
        },
    }


def job_environment(spec: PipelineSpec, job: str) -> str | None:
    """The environment a job declares, which decides the scoped variables it receives."""
    environment = pipeline_document(spec)[job].get("environment")
    return environment["name"] if environment else None


def job_scripts(spec: PipelineSpec) -> dict[str, list[str]]:
    """Each job's shell lines as a runner executes them: before_script then script."""
    document = pipeline_document(spec)
    jobs = (*pipeline_jobs(spec), *merge_request_jobs(spec))
    return {job: [*document[job].get("before_script", []), *document[job]["script"]] for job in jobs}


def pipeline_header(spec: PipelineSpec) -> str:
    """The rendered file's header: what a reviewer of the deploy path must know before reading the jobs."""
    credentials = "the deploy key and GITLAB_PRIVATE_TOKEN" if _via_api(spec) else "the deploy key"
    lines = [
        "Generated by gitops-bootstrap: change the program's settings, not this file.",
        "build-image and build-check run the app's Dockerfile, so everything they can write (artifacts,",
        "the runner's working copy, their environment) is app developers' input. update-manifest holds",
        f"{credentials}, so it takes one value from the build: the digest, in a plain",
        "artifact file, checked as sha256:<64 hex>. No dotenv report (its lines would become the job's",
        "variables, GIT_CONFIG_* and CI_API_V4_URL included), no runner checkout (GIT_STRATEGY none: it",
        "clones the app history itself), no cache. build-check runs unreviewed merge requests, so it",
        "never carries the build runners' tags.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def render_pipeline(spec: PipelineSpec) -> str:
    """The app project's `.gitlab-ci.yml` text."""
    return pipeline_header(spec) + yaml.safe_dump(pipeline_document(spec), sort_keys=False, default_flow_style=False, width=4096)
