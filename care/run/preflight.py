"""What a run checks before any work: params against its data and instrument, output paths, keys.

Each check is the function the late path calls too, never a second copy: the output checks are the ones the
writers make (`care.run.outputs`), the fold count is `care.data.folds.check_fold_count` (which `make_folds`
calls), the gate's names `care.evaluation.gate.check_gate_names`, the helper mapping
`care.evaluation.baselines.check_helper_map`, the signing key `care.release.signing.configured_key`, fused kernels
asked for by name `care.model.fused.choose_fused`, a hub base's pinned commit `care.model.presets.hub_revision`.
A fold count the data cannot fill is refused here in seconds, before the pipeline (one step per fold) is built.
Params that cannot work whatever the data (a negative seed, an unpassable bar, an empty
`lora.target_modules`, a registry name with separators) are refused when they load (`care.params`).
"""

from __future__ import annotations

from care.params import Params
from care.run.outputs import Outputs, check_outputs, check_release_out


def preflight(params: Params, outputs: Outputs, release: bool) -> None:
    """Raise CareError (usage errors exit 2) for the first thing that would fail this run later."""
    from care.data.folds import check_fold_count
    from care.errors import InvalidData
    from care.evaluation.baselines import check_helper_map, computed_baselines
    from care.evaluation.gate import check_gate_names
    from care.model.presets import hub_revision
    from care.run.data import limited, read_parsed

    check_outputs(outputs)
    hub_revision(params)  # a hub-id base must be pinned to a commit
    if params.train.fused_kernels == "liger":  # asked for by name: refused here, not at the first fine-tune
        import torch

        from care.model.fused import choose_fused

        choose_fused(params, None, "cuda" if torch.cuda.is_available() else "cpu", params.train.num_processes)
    if release:
        from care.release.signing import configured_key

        check_release_out(params.release.out)
        configured_key()  # CARE_SIGNING_KEY, when set, must name a key file
    _, parsed, instrument, _ = read_parsed(params.data)
    if parsed.problems:  # the schema's own located problems; validation (Great Expectations) adds its rules later
        raise InvalidData(parsed.problems)
    check_fold_count(params.cv.folds, limited(parsed.sessions, params.data.limit))
    ev = params.eval
    check_helper_map(ev.helper_proxy, instrument)
    check_gate_names(params.gate, list(instrument.dimensions),
                     computed_baselines(ev.helper_proxy, ev.text_baseline, ev.zero_shot))
