"""The shared wording of error messages: close-match suggestions and first lines of exceptions."""

from __future__ import annotations

import pytest

from ovss_cli.errors import OvssError
from ovss_cli.runtime import checkpoint
from ovss_cli.textutil import did_you_mean, first_line


def test_did_you_mean_names_the_closest_choice_or_nothing():
    assert did_you_mean("ade15", ["ade150", "ade847", "pc59"]) == " (did you mean 'ade150'?)"
    assert did_you_mean("zzz", ["ade150", "ade847"]) == ""
    assert did_you_mean(3, [1, 2, 3.5]) == ""  # non-strings are compared as text: '3' vs '3.5' is below the cutoff
    assert did_you_mean("coco", ["coco-stuff"], cutoff=0.4) == " (did you mean 'coco-stuff'?)"
    assert did_you_mean("coco", ["coco-stuff"]) == ""  # ratio 8/14 < 0.6


def test_first_line_never_crashes_and_never_returns_empty():
    assert first_line(ValueError("\n  bad header  \nsecond line")) == "bad header"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("\n \n")) == "RuntimeError"
    assert first_line("") == "no details"


def test_an_exception_without_a_message_still_gives_a_one_line_error(tmp_path, monkeypatch):
    def raise_empty(*args, **kwargs):
        raise RuntimeError()  # torch.load can fail with an empty message

    monkeypatch.setattr(checkpoint.torch, "load", raise_empty)
    (tmp_path / "s.state.pt").write_bytes(b"x")
    with pytest.raises(OvssError, match=r"corrupt or truncated \(RuntimeError\)"):
        checkpoint.load_training_state(tmp_path / "s.state.pt")
