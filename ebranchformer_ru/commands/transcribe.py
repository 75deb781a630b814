"""Transcribe audio files, folders and NeMo/Golos manifests with a model folder or an ONNX export.

    ebranchformer-transcribe outputs/mini recordings/ --output out.jsonl --timestamps
    ebranchformer-transcribe outputs/mini_onnx data/test_opus/crowd/manifest.jsonl --output crowd.txt --quantized
    ebranchformer-transcribe outputs/mini talk.wav --output talk.srt
    torchrun --nproc_per_node 8 --no-python ebranchformer-transcribe outputs/mini rec/ --output o.jsonl --device cuda

MODEL is a model folder (run with PyTorch) or an ebranchformer-export-onnx folder (run with ONNX Runtime). INPUT
is any mix of audio files, folders (searched for --extensions) and manifests (.json/.jsonl lines with
`audio_filepath`, relative to the manifest's folder, as NeMo and Golos write them).

The format follows --output's extension: .jsonl (path, text, duration; word times with --timestamps; a
manifest's `text` as `reference`), .txt (path TAB text), .srt/.vtt (subtitles of one recording). Without
--output the transcripts go to stdout.

A file that cannot be read is named with the reason and skipped: the others are transcribed, and the exit
status is 1. Rerunning the same command resumes: what the output and its journal hold is not transcribed again
(--overwrite starts over). Under torchrun or accelerate launch the files are shared out between the processes,
once they agree that they were started on one job (the same model, options and inputs on every machine; else
all refuse, naming what differs).
"""

from ebranchformer_ru import transcription
from ebranchformer_ru.transcription import AUDIO_EXTENSIONS, OUTPUT_FORMATS

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a model folder (PyTorch) or an ebranchformer-export-onnx folder (ONNX Runtime)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders, manifests (.json/.jsonl)")
    parser.add_argument(
        "--output", help=f"output file, format by extension: {', '.join(OUTPUT_FORMATS)}; default stdout"
    )
    parser.add_argument(
        "--batch_size", type=cli.positive_int, default=16, help="recordings (or chunks) per forward pass"
    )
    cli.add_device(parser)
    cli.add_threads(parser)
    cli.add_dtype(parser)
    cli.add_torch_compile(parser)
    cli.add_decoder(parser)
    parser.add_argument(
        "--hotwords", nargs="+", metavar="WORD", help="--decoder lm: words or phrases to favour (names, commands)"
    )
    parser.add_argument(
        "--hotword_weight", type=float, default=None, help="--decoder lm: bonus per hotword (default 10)"
    )
    parser.add_argument(
        "--chunk_length_s", type=cli.positive_float, default=30.0, help="files longer than this are cut into chunks"
    )
    parser.add_argument(
        "--stride_length_s", type=float, default=None, help="the chunks' overlap on each side (default chunk / 6)"
    )
    cli.add_switch(parser, "timestamps", "word times and confidences in .jsonl (always for .srt/.vtt)")
    cli.add_switch(parser, "vad", "cut recordings where people pause (Silero's VAD) instead of fixed windows")
    parser.add_argument(
        "--vad_threshold", type=cli.positive_float, default=0.5, help="--vad: speech probability threshold (0.5)"
    )
    parser.add_argument(
        "--vad_max_segment_s", type=cli.positive_float, default=25.0, help="--vad: longest segment (25 s)"
    )
    cli.add_switch(
        parser, "itn", "numbers, dates and money as digits (the itn extra); the spoken text kept as raw_text"
    )
    parser.add_argument(
        "--itn_cache_dir",
        default=None,
        help="--itn: where its compiled grammars are kept (~/.cache/ebranchformer_ru/itn)",
    )
    cli.add_streaming(parser)
    cli.add_switch(parser, "quantized", "ONNX export only: run the int8 model")
    parser.add_argument(
        "--extensions",
        type=cli.names,
        default=list(AUDIO_EXTENSIONS),
        metavar="EXT[,EXT...]",
        help=f"audio extensions in folders (default {','.join(AUDIO_EXTENSIONS)})",
    )
    cli.add_overwrite(
        parser, "an --output made with other settings, and start over instead of resuming one made with these"
    )
    cli.add_switch(parser, "no_progress", "no progress bar")
    cli.add_trust_remote_code(parser)
    return parser


def transcribe(args) -> int:
    return transcription.transcribe(
        args.model,
        args.inputs,
        args.output,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        dtype=args.dtype,
        torch_compile=args.torch_compile,
        decoder=args.decoder,
        hotwords=args.hotwords,
        hotword_weight=args.hotword_weight,
        chunk_length_s=args.chunk_length_s,
        stride_length_s=args.stride_length_s,
        timestamps=args.timestamps,
        quantized=args.quantized,
        trust_remote_code=args.trust_remote_code,
        extensions=tuple(args.extensions),
        overwrite=args.overwrite,
        progress=not args.no_progress,
        vad=args.vad,
        vad_threshold=args.vad_threshold,
        vad_max_segment_s=args.vad_max_segment_s,
        itn=args.itn,
        itn_cache_dir=args.itn_cache_dir,
        streaming=args.streaming,
        chunk_ms=args.chunk_ms,
        left_chunks=args.left_chunks,
        silence_after_speech_s=args.silence_after_speech_s,
        silence_without_speech_s=args.silence_without_speech_s,
        max_segment_s=args.max_segment_s,
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), transcribe, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
