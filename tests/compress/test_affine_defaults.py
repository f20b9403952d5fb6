"""Method defaults for ``--nsamples``/``--seqlen``/``--epochs`` (issue 9: affine's defaults fit the 30-minute budget).

The defaults are resolved in one place, :class:`ptmpack.compress.spec.CompressSpec`; the CLI leaves the
options unset and its ``--help`` names each method's value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ptmpack.compress.spec import DEFAULT_RUN, METHOD_RUN_DEFAULTS, CompressSpec


@pytest.mark.parametrize("quant", ["rtn", "gptq", "ptq", "affine"])
def test_unset_options_take_the_methods_defaults_and_say_so(quant):
    spec = CompressSpec(quant=quant, calib=Path("calib.txt")).check()
    want = METHOD_RUN_DEFAULTS.get(quant, DEFAULT_RUN)
    assert (spec.nsamples, spec.seqlen, spec.epochs) == (want.nsamples, want.seqlen, want.epochs)
    assert spec.defaulted == ("nsamples", "seqlen", "epochs")


def test_rtn_and_gptq_keep_32_by_512_and_affine_trains_fewer_epochs_on_the_same_windows():
    assert (DEFAULT_RUN.nsamples, DEFAULT_RUN.seqlen, DEFAULT_RUN.epochs) == (32, 512, 10)
    affine, gptq = CompressSpec(quant="affine", calib=Path("c")), CompressSpec(quant="gptq", calib=Path("c"))
    assert (affine.nsamples, affine.seqlen) == (gptq.nsamples, gptq.seqlen)
    assert 0 < affine.epochs < DEFAULT_RUN.epochs


def test_given_values_win_and_are_not_marked_defaulted():
    spec = CompressSpec(quant="affine", calib=Path("c"), nsamples=8, epochs=0)
    assert (spec.nsamples, spec.seqlen, spec.epochs) == (8, 512, 0)
    assert spec.defaulted == ("seqlen",)
    assert spec == CompressSpec(quant="affine", calib=Path("c"), nsamples=8, seqlen=512, epochs=0)


def test_bad_values_are_still_refused():
    from ptmpack.errors import UsageError

    with pytest.raises(UsageError):
        CompressSpec(quant="affine", calib=Path("c"), nsamples=0).check()
    with pytest.raises(UsageError):
        CompressSpec(quant="affine", calib=Path("c"), epochs=-1).check()


def test_help_names_each_methods_default():
    from click.testing import CliRunner

    from ptmpack.cli.compress import compress_cmd

    out = " ".join(CliRunner().invoke(compress_cmd, ["--help"]).output.split())
    for what in ("nsamples", "seqlen", "epochs"):
        common = getattr(DEFAULT_RUN, what)
        special = [f"{getattr(d, what)} for {m}" for m, d in METHOD_RUN_DEFAULTS.items() if getattr(d, what) != common]
        assert (f"default: {', '.join(special)}, {common} otherwise" if special else f"default: {common})") in out
    assert f"default: {METHOD_RUN_DEFAULTS['affine'].epochs} for affine, {DEFAULT_RUN.epochs} otherwise" in out
