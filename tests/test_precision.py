"""The precision choice (`--dtype`): what `auto` picks, bfloat16 inference through the inference core, and the
parts that stay float32 under autocast (features, masks, the subsampling and the residual stream, the CTC head, the
log-softmax, the CTC loss); `--torch_compile`."""

import functools
import json

import numpy as np
import pytest
import requests
import torch

from ebranchformer_ru import inference
from ebranchformer_ru.commands import serve
from ebranchformer_ru.commands import transcribe as command
from ebranchformer_ru.golos import EMBEDDED_CORPUS as EMBEDDED
from ebranchformer_ru.inference import InferenceError, TorchBackend, choose_dtype, cpu_has_fast_bf16, load_backend

CROWD = EMBEDDED / "test_opus" / "crowd"


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return str(path)


def test_auto_picks_bfloat16_only_where_the_cpu_has_bf16_matrix_instructions(tmp_path, monkeypatch):
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f amx_tile amx_bf16"))
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert not cpu_has_fast_bf16(cpuinfo(tmp_path, "avx512f avx512_vnni"))  # AVX-512 without BF16: emulated
    assert not cpu_has_fast_bf16(str(tmp_path / "missing"))
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: True)
    assert choose_dtype("auto") == "bfloat16"
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: False)
    assert choose_dtype("auto") == "float32"
    assert choose_dtype("bfloat16") == "bfloat16" and choose_dtype("float32") == "float32"  # asked: as asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # cuda:2, a process more than GPUs: named, not asked
    # cuda:1 an A100 (compute capability 8.0), the current device, cuda:0, a V100 (7.0), which emulates bf16
    capability = {0: (7, 0), None: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert choose_dtype("auto", "cuda") == choose_dtype("auto", "cuda:0") == "float32"
    assert choose_dtype("auto", "cuda:1") == "bfloat16"
    with pytest.raises(InferenceError, match="cuda:2: this machine has 2 CUDA device"):
        choose_dtype("auto", "cuda:2")
    with pytest.raises(InferenceError, match="--dtype must be one of float32, bfloat16, auto, got 'float16'"):
        choose_dtype("float16")


def test_an_onnx_export_refuses_bfloat16(tmp_path):
    (tmp_path / "onnx_export.json").write_text("{}")
    with pytest.raises(InferenceError, match="--dtype bfloat16: .* is an ONNX export, which runs in float32"):
        load_backend(tmp_path, dtype="bfloat16")


def test_torch_compile_is_refused_where_it_would_not_run(tmp_path, tiny_model, capsys, monkeypatch):
    (tmp_path / "onnx_export.json").write_text("{}")
    with pytest.raises(InferenceError, match="--torch_compile: .* is an ONNX export, which ONNX Runtime runs"):
        load_backend(tmp_path, torch_compile=True)
    file = str(sorted((CROWD / "files").glob("*.opus"))[0])
    with pytest.raises(SystemExit) as exit:  # a usage error exits through argparse
        command.main([str(tiny_model), file, "--streaming", "--torch_compile"])
    assert exit.value.code == 2
    assert "--torch_compile compiles the whole-recording forward" in capsys.readouterr().err
    from ebranchformer_ru import serving

    def make_app(args):  # a server not refused would start here, and serve until stopped
        raise AssertionError("serve started with --streaming --torch_compile")

    monkeypatch.setattr(serving, "make_app", make_app)
    with pytest.raises(SystemExit) as exit:
        serve.main([str(tiny_model), "--streaming", "--torch_compile"])
    assert exit.value.code == 2 and "leave out one" in capsys.readouterr().err


@pytest.fixture(scope="module")
def waveforms():
    from ebranchformer_ru.audio import read_audio

    return [read_audio(p) for p in sorted((CROWD / "files").glob("*.opus"))[:6]]


def test_bfloat16_log_probs_are_float32_close_to_float32s_and_padding_does_not_change_them(tiny_model, waveforms):
    full = TorchBackend.from_folder(str(tiny_model), language_model=False)
    half = TorchBackend.from_folder(str(tiny_model), language_model=False, dtype="bfloat16")
    assert half.dtype == "bfloat16" and full.dtype == "float32"
    reference, padded = full(waveforms), half(waveforms)
    alone = [half([w])[0] for w in waveforms]
    for r, p, a in zip(reference, padded, alone):
        assert p.dtype == np.float32 and p.shape == r.shape  # the log-softmax in float32, the frames unchanged
        assert np.allclose(np.exp(p).sum(-1), 1.0, atol=1e-5)
        assert np.abs(p - r).max() < 0.1  # bf16 keeps 8 bits of mantissa: differences of a few hundredths
        assert np.abs(p - a).max() < 0.05  # padded and alone agree under bf16 (the masks stay exact)
    assert max(np.abs(p - r).max() for p, r in zip(padded, reference)) > 0  # bf16 did run


def test_a_bfloat16_backend_casts_its_matmul_weights_once_to_what_autocast_casts_them_to(tiny_model, waveforms):
    from modeling_ebranchformer import EBranchformerForCTC

    half = TorchBackend.from_folder(str(tiny_model), language_model=False, dtype="bfloat16")
    autocast_only = TorchBackend(
        EBranchformerForCTC.from_pretrained(tiny_model).eval(), half.processor, "cpu", "bfloat16"
    )
    layer = half.model.ebranchformer.layers[0]
    assert (
        layer.ffn1.linear1.weight.dtype == torch.bfloat16 and layer.merge.depthwise_conv.weight.dtype == torch.bfloat16
    )
    assert layer.norm_ffn1.weight.dtype == torch.float32  # the norms keep float32, as under autocast
    for cast, casting in zip(half(waveforms), autocast_only(waveforms)):
        np.testing.assert_array_equal(cast, casting)


@pytest.mark.parametrize("saved", [torch.float32, torch.bfloat16])
def test_a_bfloat16_backend_runs_the_subsampling_and_the_ctc_head_in_float32(tiny_model, waveforms, tmp_path, saved):
    """Under autocast the head would give bf16 logits, rounded to steps of 1/32-1/16 where a trained model's best
    ones lie, and the subsampling a bf16 start of the residual stream; in the bf16 backend each gives the float32
    product of its input and the folder's weights in float32, exactly, also from a folder saved in bf16 (which loads
    in bf16: Transformers' default dtype is the saved one)."""
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    EBranchformerForCTC.from_pretrained(tiny_model).to(saved).save_pretrained(tmp_path)
    EBranchformerProcessor.from_pretrained(tiny_model).save_pretrained(tmp_path)
    half = TorchBackend.from_folder(str(tmp_path), language_model=False, dtype="bfloat16")
    folder = EBranchformerForCTC.from_pretrained(tmp_path).float()
    assert half.model.ebranchformer.layers[0].ffn1.linear1.weight.dtype == torch.bfloat16
    names, seen = ("lm_head", "ebranchformer.subsampling.projection"), {}

    def keep(name, module, args, output):  # what the module was given and gave (returns None: the output stands)
        seen[name] = args[0], output

    for name in names:
        half.model.get_submodule(name).register_forward_hook(functools.partial(keep, name))
    half(waveforms)
    for name in names:
        inputs, outputs = seen[name]
        weights = folder.get_submodule(name)
        with torch.inference_mode():
            expected = torch.nn.functional.linear(inputs.float(), weights.weight, weights.bias)
        assert outputs.dtype == torch.float32, name
        torch.testing.assert_close(outputs, expected, rtol=0, atol=0)


def test_a_folder_saved_in_bfloat16_runs_in_float32_with_dtype_float32(tiny_model, waveforms, tmp_path):
    """Transformers loads a folder saved in bf16 in bf16; `--dtype float32` computes in float32 all the same: what the
    same values saved in float32 give, bit for bit (the float32 features met bf16 weights before)."""
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    rounded = EBranchformerForCTC.from_pretrained(tiny_model).to(torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        rounded.to(dtype).save_pretrained(tmp_path / str(dtype))
        EBranchformerProcessor.from_pretrained(tiny_model).save_pretrained(tmp_path / str(dtype))
    saved_half, saved_full = (
        TorchBackend.from_folder(str(tmp_path / str(dtype)), language_model=False)
        for dtype in (torch.bfloat16, torch.float32)
    )
    assert saved_half.model.lm_head.weight.dtype == torch.float32
    for half, full in zip(saved_half(waveforms), saved_full(waveforms)):
        np.testing.assert_array_equal(half, full)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bf16 kernels on this CPU")
def test_a_bfloat16_cpu_backend_multiplies_by_linear_weights_packed_once_for_onednn(tiny_model, waveforms, tmp_path):
    """The linear layers run oneDNN's kernel on weights it laid out at loading, not `addmm`, which lays the weight
    out again at every call; the log-probabilities are autocast's, bit for bit (with non-zero biases: the tiny
    model's start at zero)."""
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    model = EBranchformerForCTC.from_pretrained(tiny_model)
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.bias, std=0.5)
    model.save_pretrained(tmp_path)
    EBranchformerProcessor.from_pretrained(tiny_model).save_pretrained(tmp_path)
    half = TorchBackend.from_folder(str(tmp_path), language_model=False, dtype="bfloat16")
    autocast_only = TorchBackend(
        EBranchformerForCTC.from_pretrained(tmp_path).eval(), half.processor, "cpu", "bfloat16"
    )
    with torch.profiler.profile() as profile:
        packed = half(waveforms)
    ops = [event.name for event in profile.events()]
    assert "mkldnn::_linear_pointwise" in ops and ops.count("aten::linear") == 2  # in float32: subsampling, head
    for ours, autocasts in zip(packed, autocast_only(waveforms)):
        np.testing.assert_array_equal(ours, autocasts)


def test_a_bfloat16_cpu_backend_pads_to_few_shapes_without_changing_what_it_gives(tiny_model, waveforms):
    """In bf16 on a CPU a batch's frames are padded to a multiple of 64, so that oneDNN meets few shapes; the model
    masks the padding: each recording's log-probabilities are those of the batch padded only to its longest,
    within bf16's rounding. float32 pads to the longest only."""
    full = TorchBackend.from_folder(str(tiny_model), language_model=False)
    half = TorchBackend.from_folder(str(tiny_model), language_model=False, dtype="bfloat16")
    frames = [half.features([w])["input_features"].shape[1] for w in waveforms]
    assert all(n % 64 == 0 for n in frames) and half.features(waveforms)["input_features"].shape[1] % 64 == 0
    longest = full.features(waveforms)["input_features"].shape[1]
    assert longest % 64 and longest == max(len(w) for w in waveforms) // 160 + 1
    to_longest = TorchBackend(half.model, half.processor, "cpu", "bfloat16")
    to_longest.pad_to_multiple_of = None
    for padded, unpadded in zip(half(waveforms), to_longest(waveforms)):
        assert padded.shape == unpadded.shape and np.abs(padded - unpadded).max() < 0.05
    # float32 with the same padding: the model masks it to float32's rounding, alone and in a batch
    full_padded = TorchBackend(full.model, full.processor, "cpu", "float32")
    full_padded.pad_to_multiple_of = 64
    for batch in ([waveforms[0]], waveforms):
        for padded, unpadded in zip(full_padded(batch), full(batch)):
            np.testing.assert_allclose(padded, unpadded, atol=2e-5, rtol=0)
    # never past the position table: 1.15 s (116 frames) fits 30 steps (120 frames), its padding to 128 would not
    half.model.config.max_position_embeddings = 30
    half.model.ebranchformer.positions.table = half.model.ebranchformer.positions.table[:30]
    assert half.features([waveforms[0][:18400]])["input_features"].shape[1] == 116 and half([waveforms[0][:18400]])


def test_the_log_softmax_and_the_ctc_loss_stay_float32_under_autocast(tiny_model):
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    model = EBranchformerForCTC.from_pretrained(tiny_model).eval()
    processor = EBranchformerProcessor.from_pretrained(tiny_model)
    rng = np.random.default_rng(0)
    inputs = processor.feature_extractor(
        [rng.normal(0, 0.1, 16000).astype(np.float32), rng.normal(0, 0.1, 12000).astype(np.float32)],
        sampling_rate=16000,
        return_tensors="pt",
    )
    labels = torch.tensor([[3, 5, 7, 0, 9], [4, 4, 2, -100, -100]])
    seen = []
    subsampling = model.ebranchformer.subsampling.projection
    for module in (subsampling, model.ebranchformer.layers[0].ffn1.linear1, model.lm_head):
        module.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    with torch.autocast("cpu", torch.bfloat16):
        output = model(**inputs, labels=labels)
    (stacked, start), (_, inner), (hidden, logits) = seen
    assert inner.dtype == torch.bfloat16  # autocast did reach the model's matrix products
    assert hidden.dtype == torch.float32  # the residual stream, which the last layer norm gave the head
    # the subsampling and the CTC head (`Float32Linear`s) gave the float32 products of their inputs and their
    # float32 weights, exactly
    assert logits is output.logits and logits.dtype == torch.float32 and output.loss.dtype == torch.float32
    expected = torch.nn.functional.linear(hidden.float(), model.lm_head.weight, model.lm_head.bias)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert stacked.dtype == start.dtype == torch.float32
    expected = torch.nn.functional.linear(stacked, subsampling.weight, subsampling.bias)
    torch.testing.assert_close(start, expected, rtol=0, atol=0)
    # the loss is the float32 CTC loss of those logits: nothing of it was computed in bf16
    expected = torch.nn.functional.ctc_loss(
        torch.log_softmax(output.logits.float(), -1).transpose(0, 1),
        labels.masked_fill(labels < 0, 0),
        model.get_output_lengths(inputs["attention_mask"].sum(-1)),
        (labels >= 0).sum(-1),
        blank=model.config.pad_token_id,
        reduction=model.config.ctc_loss_reduction,
        zero_infinity=model.config.ctc_zero_infinity,
    )
    assert torch.allclose(output.loss, expected, rtol=1e-6, atol=1e-6)


def test_transcribe_dtype_records_its_choice_and_refuses_to_mix_precisions(tiny_model, tmp_path, capsys):
    files = [str(p) for p in sorted((CROWD / "files").glob("*.opus"))[:3]]
    output = tmp_path / "out.jsonl"
    args = [str(tiny_model), *files, "--output", str(output), "--no_progress", "--dtype", "bfloat16"]
    assert command.main(args) == 0
    assert len(output.read_text().splitlines()) == 3
    made = json.loads((tmp_path / ".out.jsonl.transcribe.json").read_text())
    assert made["settings"]["dtype"] == "bfloat16"
    capsys.readouterr()
    assert command.main([*args[:-1], "float32"]) == 1  # bf16 transcripts are not resumed into by float32
    assert "dtype: 'bfloat16' then, None now" in capsys.readouterr().err


def test_a_run_records_and_agrees_on_what_dtype_auto_resolved_to(tiny_model, tmp_path, capsys, monkeypatch):
    """`--dtype auto` is bf16 on one machine and float32 on another: a transcription records what it resolved to,
    so its output is not resumed where auto resolves otherwise (with transcripts of another precision), and an auto
    run that resolved to float32 resumes float32's output; the processes of a run, and of an evaluation, compare
    the resolved precision, not the word `auto`."""
    from ebranchformer_ru.evaluation import Evaluation, evaluation_description
    from ebranchformer_ru.golos import EMBEDDED_CORPUS
    from ebranchformer_ru.transcription import Options, job_description

    files = [str(p) for p in sorted((CROWD / "files").glob("*.opus"))[:2]]
    model, output, other = str(tiny_model), str(tmp_path / "out.jsonl"), str(tmp_path / "float32.jsonl")
    fast = {"bf16": True}
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: fast["bf16"])
    assert command.main([model, files[0], "--output", output, "--no_progress", "--dtype", "auto"]) == 0
    assert json.loads((tmp_path / ".out.jsonl.transcribe.json").read_text())["settings"]["dtype"] == "bfloat16"
    fast["bf16"] = False
    capsys.readouterr()
    assert command.main([model, *files, "--output", output, "--no_progress", "--dtype", "auto"]) == 1
    assert "dtype: 'bfloat16' then, None now" in capsys.readouterr().err
    assert command.main([model, files[0], "--output", other, "--no_progress"]) == 0
    assert command.main([model, *files, "--output", other, "--no_progress", "--dtype", "auto"]) == 0
    assert "1 already done" in capsys.readouterr().err
    corpus = str(EMBEDDED_CORPUS)
    evaluation = Evaluation(model, corpus, ["crowd"], tmp_path, 16, None, False, None, {}, False, "cpu", None, "auto")
    described = []
    for fast["bf16"] in (True, False):
        options = Options(model, files, None, dtype="auto")
        described.append((job_description(options, [], False, "cpu"), evaluation_description(evaluation, "cpu")))
    assert [(job["--dtype"], run["--dtype"]) for job, run in described] == [("bfloat16",) * 2, ("float32",) * 2]


@pytest.fixture
def compiled_batches(monkeypatch):
    """The batch sizes the compiled forward is called with, `compile_model` standing in for Inductor (the
    compilation itself is tested below)."""
    batches = []

    def compile_model(model):
        def forward(**inputs):
            batches.append(len(inputs["input_features"]))
            return model(**inputs)

        return forward

    monkeypatch.setattr(inference, "compile_model", compile_model)
    return batches


def test_transcribe_torch_compile_compiles_the_backends_model_and_records_it(tiny_model, tmp_path, compiled_batches):
    files = [str(p) for p in sorted((CROWD / "files").glob("*.opus"))[:2]]
    output = tmp_path / "out.jsonl"
    assert command.main([str(tiny_model), *files, "--output", str(output), "--no_progress", "--torch_compile"]) == 0
    assert compiled_batches == [1, 2] and len(output.read_text().splitlines()) == 2  # at loading, then the batch
    assert json.loads((tmp_path / ".out.jsonl.transcribe.json").read_text())["settings"]["torch_compile"] is True


def test_evaluate_tune_lm_and_the_server_compile_with_torch_compile(tiny_model, lm_folder, tmp_path, compiled_batches):
    """`--torch_compile` compiles at loading (a batch of one); evaluate says so in results.json; the server also
    compiles a batch of two before it is ready, and says so on /health."""
    from served import Running

    from ebranchformer_ru.commands import evaluate, tune_lm

    out = tmp_path / "eval"
    assert evaluate.main([str(tiny_model), "--max_samples", "2", "--output_dir", str(out), "--torch_compile"]) == 0
    assert json.loads((out / "results.json").read_text())["torch_compile"] is True
    assert compiled_batches[0] == 1 and len(compiled_batches) > 1
    compiled_batches.clear()
    grid = ["--alphas", "0.5", "--betas", "0", "--max_samples", "2", "--dry_run"]
    assert tune_lm.main([str(lm_folder[1]), *grid, "--torch_compile"]) == 0 and compiled_batches[0] == 1
    compiled_batches.clear()
    with Running(tiny_model, "--torch_compile") as running:
        assert compiled_batches == [1, 1, 2]
        assert requests.get(running.url + "/health").json()["torch_compile"] is True


def test_a_model_inductor_cannot_compile_is_refused_at_loading_with_the_reason(tiny_model, monkeypatch, capsys):
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InvalidCxxCompiler

    def fail(**inputs):
        error = BackendCompilerFailed(fail, InvalidCxxCompiler(), None)
        error.args = (f"{error}\n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace",)  # as Dynamo adds it
        raise error

    monkeypatch.setattr(torch, "compile", lambda model, **options: fail)
    file = str(sorted((CROWD / "files").glob("*.opus"))[0])
    assert command.main([str(tiny_model), file, "--torch_compile", "--no_progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: --torch_compile: Inductor failed to compile the model (InvalidCxxCompiler: No")
    assert error[-1].endswith("install one, or leave out --torch_compile") and "error:" not in "".join(error[:-1])


@pytest.fixture(params=["full context", "chunk convolutions"])
def model_to_compile(request, tiny_model, tiny_config_values, tmp_path):
    """The tiny model, and a streaming one whose whole-recording forward convolves chunk by chunk."""
    if request.param == "full context":
        return tiny_model
    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    values = dict(tiny_config_values, chunk_convolutions=True, streaming_chunk_size=8, streaming_left_chunks=2)
    EBranchformerForCTC(EBranchformerConfig(**values)).eval().save_pretrained(tmp_path)
    EBranchformerProcessor().save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_a_compiled_backend_gives_the_eager_log_probs_for_every_batch_and_length(model_to_compile, waveforms):
    """`--torch_compile`: Inductor with frozen weights and dynamic shapes, compiled for a batch of one and of more;
    then recordings alone and batched (other lengths, other batch sizes) run the compiled code without compiling
    again, and give eager bf16's log-probabilities within bf16's rounding."""
    from torch._dynamo.utils import counters

    folder = str(model_to_compile)
    eager = TorchBackend.from_folder(folder, language_model=False, dtype="bfloat16")
    compiled = TorchBackend.from_folder(folder, language_model=False, dtype="bfloat16", torch_compile=True)
    compiled.compile_now()
    compilations = counters["stats"]["unique_graphs"]
    with torch.profiler.profile() as profile:
        outputs = compiled(waveforms) + [compiled([w])[0] for w in waveforms[:3]] + compiled(waveforms[3:])
    assert counters["stats"]["unique_graphs"] == compilations  # no length or batch size compiled again
    assert any(event.name.startswith("Torch-Compiled Region") for event in profile.events())
    expected = eager(waveforms) + eager(waveforms[:3]) + eager(waveforms[3:])
    for ours, theirs in zip(outputs, expected):
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 0.05


@pytest.mark.slow
def test_bf16_training_runs_on_the_cpu_with_float32_losses(train_args, tmp_path):
    """`train_ctc.py --bf16 true` on a CPU: Trainer's autocast; the weights stay float32 and the losses finite."""
    from ebranchformer_ru import training

    trainer, metrics = training.run(train_args(tmp_path, "--max_steps", "3", "--bf16", "true"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(np.isfinite(losses)) and metrics["nonfinite_losses"] == 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bf16_training_gives_the_float32_layers_float32_gradients_compiled_as_eager(
    train_args, tmp_path, monkeypatch, compiled
):
    """Trainer runs the backward outside autocast, so the gradients of the CTC head and of the subsampling, which
    multiply in float32 (`Float32Linear`), are float32 products. Compiled, AOTAutograd traced the backward under the
    forward's autocast by default, and both came out of bf16 products: every value a bf16 one. (Inductor and the
    `aot_eager` backend, quicker to compile, trace the backward alike.)"""
    from ebranchformer_ru import training

    gradients, load = {}, training.load_model_and_processor
    names = ("lm_head", "ebranchformer.subsampling.projection")

    def keep(name, weight):  # the first step's gradient, before the optimizer's step and zero_grad
        gradients[name] = weight.grad.clone()

    def loading(model_args):
        model, processor = load(model_args)
        for name in names:
            model.get_submodule(name).weight.register_post_accumulate_grad_hook(functools.partial(keep, name))
        return model, processor

    monkeypatch.setattr(training, "load_model_and_processor", loading)
    compiling = ["--torch_compile", "true", "--torch_compile_backend", "aot_eager"] if compiled else []
    training.run(train_args(tmp_path, "--max_steps", "1", "--bf16", "true", *compiling))
    assert set(gradients) == set(names)
    for name, gradient in gradients.items():
        assert gradient.dtype == torch.float32 and gradient.abs().sum() > 0, name
        assert not torch.equal(gradient.bfloat16().float(), gradient), f"{name}: a bf16 product's gradient"


@pytest.mark.slow
@pytest.mark.parametrize("bf16", ["false", "true"])
def test_training_from_a_folder_saved_in_bfloat16_keeps_float32_weights(train_args, tiny_model, tmp_path, bf16):
    """A folder saved in bf16, fine-tuned: Transformers would load it in bf16, and float32 features then met bf16
    weights (a crash), or with --bf16 true the weights, the optimizer state, the head and the position table were
    all bf16. Trainer's mixed precision keeps float32 weights whatever the folder holds."""
    from ebranchformer_ru import training
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    folder = tmp_path / "saved in bf16"
    EBranchformerForCTC.from_pretrained(tiny_model).to(torch.bfloat16).save_pretrained(folder)
    EBranchformerProcessor.from_pretrained(tiny_model).save_pretrained(folder)
    options = train_args(tmp_path / "run", "--max_steps", "1", "--bf16", bf16, "--model_name_or_path", str(folder))
    at = options.index("--config_overrides")
    trainer, metrics = training.run(options[:at] + options[at + 2 :])
    assert np.isfinite(metrics["train_loss"])
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert trainer.model.ebranchformer.positions.table.dtype == torch.float32


def steps_to(losses: list[float], threshold: float, window: int = 5) -> int | None:
    """The first step at which the mean of the last `window` losses is at most `threshold`."""
    for end in range(window, len(losses) + 1):
        if sum(losses[end - window : end]) / window <= threshold:
            return end
    return None


@pytest.mark.slow
def test_bf16_training_reaches_float32s_loss_within_a_fifth_more_steps(train_args, tmp_path):
    """The tiny model on 40 s of speech at a constant learning rate: the loss float32 reaches in N steps, bf16
    autocast reaches in at most 1.2 N (the log-softmax and the CTC loss in float32 keep the gradients sound)."""
    from ebranchformer_ru import training

    def losses(name, steps, *extra):
        options = ["--max_steps", str(steps), "--learning_rate", "3e-3", "--lr_scheduler_type", "constant"]
        options += ["--warmup_steps", "0", "--seed", "0", *extra]
        trainer, _ = training.run(train_args(tmp_path / name, *options))
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    full = losses("float32", 40)
    threshold = sum(full[-5:]) / 5
    assert threshold < 0.6 * sum(full[:5]) / 5  # it did learn: the threshold means something
    half = losses("bfloat16", 48, "--bf16", "true")
    reached = steps_to(half, threshold)
    print(f"loss {threshold:.3f}: float32 in {steps_to(full, threshold)} steps, bf16 in {reached}")
    assert reached is not None and reached <= 1.2 * steps_to(full, threshold), (full, half)
