"""Release: merge the adapter, export to ONNX, check parity, and package for `care score`.

    merge_adapter(base_dir, adapter_dir, merged_dir, check_inputs, max_diff)  -> parity dict
    export_onnx(merged_dir, onnx_dir, device)                                 -> export dict
    check_parity(merged_dir, onnx_dir, sessions, instrument, ...)             -> parity dict
    build_package(out_dir, onnx_dir, tokenizer_dir, instrument_path, metadata) -> manifest
"""

from care.release.export import check_parity, export_onnx, keep_last_logits
from care.release.merge import merge_adapter
from care.release.package import build_package, model_card

__all__ = ["build_package", "check_parity", "export_onnx", "keep_last_logits", "merge_adapter", "model_card"]
