#!/usr/bin/env bash
# Continue the CIFAR-10 study with the code of its tag, whatever main holds now:
#
#   launch/study_at_tag.sh [launch/study.sh arguments, e.g. --budget-min 100]
#
# Makes (once) a git worktree of the tag (STUDY_TAG, default study-cifar10-v1.1) at STUDY_WORKTREE (default
# ../deepvit-study-worktree), links this checkout's store (docs/study/mlflow.db, artifacts/, study.json,
# lr_selection.json) and runs/ (converted data, the points' folders and checkpoints) into it, and runs the study there with that tree's own package
# first on PYTHONPATH: every run records the tag's commit (code.commit) and code.dirty=false, and the record lands in
# this checkout's docs/study/, ready to commit. The plan says why: docs/study/plan.md ("Code").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HERE=$PWD
TAG=${STUDY_TAG:-study-cifar10-v1.1}
WT=${STUDY_WORKTREE:-../deepvit-study-worktree}
# The default tag's commit, named here because a clone of main does not bring tags along: the tag is recreated from it.
STUDY_V11_COMMIT=06b9b5e24fa2dca67c24292e7e313e7062f551b9
if ! git rev-parse -q --verify "refs/tags/$TAG" >/dev/null; then
    if [[ "$TAG" == study-cifar10-v1.1 ]] && git cat-file -e "$STUDY_V11_COMMIT^{commit}" 2>/dev/null; then
        git tag "$TAG" "$STUDY_V11_COMMIT"
        echo "study_at_tag: tag $TAG recreated at $STUDY_V11_COMMIT (a clone of main does not carry tags)" >&2
    else
        echo "study_at_tag: error: no tag $TAG in this checkout (git fetch --tags?)" >&2; exit 2
    fi
fi
if [[ ! -d "$WT" ]]; then
    git worktree add --detach "$WT" "$TAG" >/dev/null
elif [[ "$(git -C "$WT" rev-parse HEAD)" != "$(git rev-parse "$TAG^{commit}")" ]]; then
    git -C "$WT" checkout -q --detach "$TAG"
fi
mkdir -p docs/study/artifacts runs
for f in mlflow.db artifacts study.json lr_selection.json; do   # the tag's own copy (if any) gives way to the link
    [[ -L "$WT/docs/study/$f" ]] || { rm -rf "$WT/docs/study/$f"; ln -s "$HERE/docs/study/$f" "$WT/docs/study/$f"; }
done
# runs/: the converted data and the points' folders (checkpoints of a stopped point resume from here)
[[ -L "$WT/runs" ]] || { [[ ! -e "$WT/runs" ]] || mv "$WT/runs" "$WT/runs.before-link"; ln -s "$HERE/runs" "$WT/runs"; }
cd "$WT"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec bash launch/study.sh "$@"
