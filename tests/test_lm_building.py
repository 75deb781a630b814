"""ebranchformer-build-lm (build_lm.py, ebranchformer_ru.lm_building): a language model from text or an
ARPA file into a model folder; bad input refused with the folder left as it was; exit statuses."""

import shutil

import pytest
from lm_inputs import ARPA, build_lm

from ebranchformer_ru.commands import build_lm as build_lm_command
from ebranchformer_ru.errors import Error, UsageError


def test_build_lm_refuses_bad_input_and_leaves_the_folder_as_it_was(lm_folder, tmp_path, capsys):
    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(Error, match="language_model exists; pass --overwrite"):
        build_lm([str(copy)])
    text = tmp_path / "corpus.txt"
    text.write_text("привет мир\nhello мир\n", encoding="utf-8")
    with pytest.raises(Error, match=r"corpus.txt, line 2: characters \['e', 'h', 'l', 'o'\]"):
        build_lm([str(copy), "--text", str(text), "--overwrite"])
    with pytest.raises(UsageError, match="alpha=12.0 is out of range"):
        build_lm([str(copy), "--overwrite", "--alpha", "12"])
    corrupt = tmp_path / "golos.arpa"
    corrupt.write_text(ARPA.replace("\\end\\\n", ""))
    with pytest.raises(Error, match="golos.arpa: no \\\\end\\\\ line"):
        build_lm([str(copy), "--arpa", str(corrupt), "--overwrite"])
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before
    # an ARPA file given as it is, and a text corpus, replace the LM with --overwrite
    latin_free = ARPA.replace("а", "д").replace("б", "е")
    (tmp_path / "given.arpa").write_text(latin_free)
    build_lm([str(copy), "--arpa", str(tmp_path / "given.arpa"), "--overwrite", "--alpha", "0.7"])
    assert (copy / "language_model" / "given.arpa").read_text() == latin_free
    assert not (copy / "language_model" / "lm.arpa").exists()
    build_lm([str(copy), "--text", str(_ok_text(tmp_path)), "--overwrite", "--order", "2"])
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(copy)
    assert processor.language_model.order == 2 and processor.decoder.alpha == 0.5
    assert processor.language_model.vocabulary - {"<s>", "</s>", "<unk>"} == {"привет", "мир", "ежик"}


def _ok_text(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text("Привет   мир\n\nЁжик мир\n", encoding="utf-8")  # normalised as training text: ё -> е
    return path


def test_build_lm_takes_real_text_with_punctuation(lm_folder, tmp_path):
    """Punctuation and symbols are removed as transcripts have none; letters outside the alphabet and numbers
    in digits stay errors that name the line; a folder given as --text is named."""
    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    text = tmp_path / "corpus.txt"
    text.write_text("Привет, мир!\n«Ёжик» — это ёж… (да?)\n", encoding="utf-8")
    build_lm([str(copy), "--text", str(text), "--overwrite", "--order", "2"])
    from transformers import AutoProcessor

    words = AutoProcessor.from_pretrained(copy).language_model.vocabulary - {"<s>", "</s>", "<unk>"}
    assert words == {"привет", "мир", "ежик", "это", "еж", "да"}
    text.write_text("привет, мир\nв 5 часов\n", encoding="utf-8")
    with pytest.raises(Error, match=r"corpus.txt, line 2: characters \['5'\] .*spell numbers out"):
        build_lm([str(copy), "--text", str(text), "--overwrite"])
    with pytest.raises(Error, match=r"is a folder; give text files"):
        build_lm([str(copy), "--text", str(tmp_path), "--overwrite"])


def test_build_lm_names_an_empty_text_and_refuses_an_order_for_an_arpa(lm_folder, tmp_path):
    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (tmp_path / "empty.txt").write_text(",,, !\n\n", encoding="utf-8")
    with pytest.raises(Error, match=r"--text .*empty.txt: no sentence in it"):
        build_lm([str(copy), "--text", str(_ok_text(tmp_path)), "--text", str(tmp_path / "empty.txt"), "--overwrite"])
    with pytest.raises(UsageError, match="give either --arpa or --data_dir/--text/--order"):
        build_lm([str(copy), "--arpa", str(copy / "language_model" / "lm.arpa"), "--order", "5", "--overwrite"])


def test_build_lm_exit_statuses(lm_folder, tmp_path, capsys):
    """A usage error exits 2 with argparse's usage; a missing folder or an existing LM exit 1 with one line."""
    _, folder, _ = lm_folder
    arpa = str(folder / "language_model" / "lm.arpa")
    with pytest.raises(SystemExit) as exit:
        build_lm_command.main([str(folder), "--arpa", arpa, "--text", arpa])
    assert exit.value.code == 2 and capsys.readouterr().err.startswith("usage:")
    assert build_lm_command.main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: model folder not found: {tmp_path / 'nowhere'}"]
    assert build_lm_command.main([str(folder), "--overwrite", "false"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {folder / 'language_model'} exists; pass --overwrite to replace the language model"
    ]
    args = build_lm_command.build_parser().parse_args(
        [str(folder), "--push_to_hub", "--hub_model_id", "you/model", "--text", "a.txt", "--text", "b.txt"]
    )
    assert (args.push_to_hub, args.hub_model_id, args.text) == (True, "you/model", ["a.txt", "b.txt"])
