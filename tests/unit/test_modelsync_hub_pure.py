"""hf:// errors that need no Hub: what a user who kept spec.model.version's default reads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub.errors import RevisionNotFoundError

from qwen_operator.api.spec import ModelSpec
from qwen_operator.modelsync.backend import NotFoundError
from qwen_operator.modelsync.hub import DEFAULT_SPEC_VERSION, HubRegistry


class NoRevisions:
    """An HfApi whose repository has no such revision (what the Hub answers with a 404)."""

    def model_info(self, repo_id: str, revision: str | None = None) -> Any:
        response = SimpleNamespace(status_code=404, headers={}, request=None, url="http://hub.invalid")
        raise RevisionNotFoundError(
            f"Revision Not Found for url: .../{repo_id}/revision/{revision}.", response=response
        )  # type: ignore[arg-type]


def registry() -> HubRegistry:
    return HubRegistry("hf://Qwen/Qwen3-0.6B", NoRevisions(), "http://hub.invalid", None)  # type: ignore[arg-type]


def test_the_default_version_is_the_specs() -> None:
    assert ModelSpec.model_fields["version"].default == DEFAULT_SPEC_VERSION


def test_the_default_version_not_found_says_what_to_set() -> None:
    with pytest.raises(NotFoundError) as err:
        registry().resolve(DEFAULT_SPEC_VERSION)
    msg = str(err.value)
    assert "revision not found" in msg and "\n" not in msg
    assert "spec.model.version defaults to 'stable'; for hf:// set it to a branch, tag or commit" in msg


def test_another_missing_revision_gets_no_hint() -> None:
    with pytest.raises(NotFoundError) as err:
        registry().resolve("release-2")
    assert "revision not found" in str(err.value) and "defaults to" not in str(err.value)
