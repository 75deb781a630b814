"""Generate `ebranchformer_ru/golos/golos_mini/`: a small corpus in exactly the layout and format of the course's Golos archive.

    ebranchformer_ru/golos/golos_mini/train_opus/manifest.jsonl               + train_opus/{crowd,farfield}/*.opus
    ebranchformer_ru/golos/golos_mini/test_opus/crowd/manifest.jsonl          + test_opus/crowd/files/*.opus
    ebranchformer_ru/golos/golos_mini/test_opus/farfield/manifest.jsonl       + test_opus/farfield/files/*.opus
    ebranchformer_ru/golos/golos_mini/test_opus/heldout_voice/manifest.jsonl  + test_opus/heldout_voice/files/*.opus

Train mixes the two domains as Golos does (400 crowd + 100 farfield utterances, about 25 minutes), the domain
being the first folder of `audio_filepath`. Texts are Golos-like voice-assistant requests (names and
patronymics, numbers, money, time, questions, "салют ...", "джой ...") of at most 68 characters in the
33-letter alphabet; a text goes to the test sets iff crc32(text) % 4 == 0, so no test sentence is in train.

Voices. Train, test crowd and test farfield share one family of voices, all from what Debian packages:
- espeak-ng (formant synthesis), about two thirds of the utterances: 67 voice variants (m1-m8, f1-f5 and
  the named ones such as Andy, Annie, Denis, Gene, Jacky, Lee, Mario, Michael, Pablo, Storm...; not the
  effect voices: whisper, croak, robots), random rate 125-195 words per minute and pitch 25-75;
- festival with msu_ru_nsh_clunits, about a third: unit selection from a real male Russian speaker's
  recordings, the most natural voice here. Its units keep their recorded durations and F0 (festival's
  Duration_Stretch has no effect on it), so each utterance is resampled by a random factor 0.88-1.12 and
  kept as 16 kHz: pitch, formants (like a shorter or longer vocal tract) and tempo shift together.
test_opus/heldout_voice is clean speech (`"domain": "crowd"` in each line) from espeak-ng's Klatt
variants (klatt, klatt2, klatt3, klatt4, klatt6: another waveform generator, a Klatt cascade/parallel
formant synthesiser with its own glottal source), which no other split contains (nor the named
variants that switch to Klatt synthesis: adam, benjamin, caleb, david, edward...). It measures how a model
does on a voice it has never heard; the in-voice test sets measure the rest. Each manifest line also
has "speaker" (e.g. "espeak-ng:m3", "festival:msu_ru_nsh:104", the resampling factor in percent), which
the Golos builder ignores.

Each recording gets 0.1-0.4 s of silence on both sides and a random level (peak 0.3-0.85); farfield ones are
made distant (`make_distant`: reverberation, a 12-20 dB level drop, room noise). Audio is 16 kHz mono Opus,
as in Golos, with pinned Ogg serial numbers; durations are read back from the written files.

Needs (only this script): Debian's `espeak-ng`, `festival` and `festvox-ru` packages
(apt-get install espeak-ng festival festvox-ru) and scipy (pip). Takes about 2.5 minutes on one core.
The output is the same for the same --seed and package versions; everything random about an utterance
depends on (seed, split, index) only, so changing one split leaves the others' bytes as they are.

    python scripts/make_golos_mini.py --overwrite          # regenerate ebranchformer_ru/golos/golos_mini
    python scripts/make_golos_mini.py --out DIR [--seed 0] [--limit N]

`--limit N` makes only the first N utterances of each split, byte for byte those of the full corpus
(tests/test_make_golos_mini.py compares them with the committed files). An existing --out folder is
replaced only with --overwrite, and only if it is a corpus this script made (its manifests name their
`speaker` as this script writes them): a real Golos folder has the same layout and is never replaced.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

# split folder -> (utterances, how many of them are farfield, voice family)
SPLITS = {
    "train_opus": (500, 100, "train"),
    "test_opus/crowd": (60, 0, "train"),
    "test_opus/farfield": (60, 60, "train"),
    "test_opus/heldout_voice": (60, 0, "heldout"),
}
# espeak-ng variants on its default (formant) synthesiser: the numbered ones and the named ones that do not
# switch to the Klatt synthesiser; left out as well are the effect voices (whisper, croak, Demonic, robots).
ESPEAK_VOICES = [
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "AnxiousAndy",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "RicishayMax",
    "anika",
    "antonio",
    "aunty",
    "belinda",
    "boris",
    "ed",
    "grandma",
    "grandpa",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "linda",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "travis",
    "victor",
    "zac",
]
# The held-out family: espeak-ng's Klatt-synthesiser variants, a different way of making the waveform
# (cascade/parallel formant resonators with a Klatt glottal source); none of them is in any other split.
HELDOUT_VOICES = ["klatt", "klatt2", "klatt3", "klatt4", "klatt6"]
FESTIVAL_SHARE = 1 / 3  # of the training-family utterances: festival's msu_ru_nsh (unit selection, a real speaker)
TEST_TEXTS = 4  # a text belongs to the test sets iff crc32(text) % TEST_TEXTS == 0: train and test never share one
ALPHABET = set(" абвгдежзийклмнопрстуфхцчшщъыьэюя")

FIRST_NAMES = [
    ("светлане", "васильевне"),
    ("ивану", "петровичу"),
    ("анне", "сергеевне"),
    ("михаилу", "андреевичу"),
    ("ольге", "николаевне"),
    ("дмитрию", "ивановичу"),
    ("марии", "александровне"),
    ("сергею", "викторовичу"),
    ("елене", "павловне"),
    ("алексею", "михайловичу"),
    ("татьяне", "юрьевне"),
    ("николаю", "федоровичу"),
    ("наталье", "олеговне"),
    ("андрею", "владимировичу"),
    ("ирине", "борисовне"),
    ("павлу", "григорьевичу"),
]
SURNAMES = [
    "николенко",
    "иванову",
    "смирновой",
    "кузнецову",
    "поповой",
    "соколову",
    "лебедевой",
    "козлову",
    "новиковой",
    "морозову",
    "волковой",
    "зайцеву",
    "павловой",
    "семенову",
    "голубевой",
    "орлову",
]
CITIES = [
    "москве",
    "казани",
    "самаре",
    "новосибирске",
    "екатеринбурге",
    "сочи",
    "твери",
    "омске",
    "перми",
    "уфе",
    "хабаровске",
    "челябинске",
    "ярославле",
    "калининграде",
    "владивостоке",
    "мурманске",
    "тюмени",
]
THINGS = [
    "молоко",
    "хлеб",
    "билеты в кино",
    "новый телефон",
    "пицца",
    "такси до дома",
    "цветы",
    "кофе",
    "щетка для зубов",
    "шоколад",
    "фрукты",
    "подъезд к аэропорту",
    "чай с лимоном",
    "детский шампунь",
    "электрический чайник",
    "юбка",
    "ящик для инструментов",
]
ACTIONS = [
    "включи музыку",
    "выключи свет",
    "поставь будильник",
    "найди рецепт борща",
    "позвони маме",
    "открой погоду",
    "сделай погромче",
    "расскажи анекдот",
    "включи новости",
    "найди ближайшую аптеку",
    "сделай потише",
    "включи сериал",
    "открой объявления",
    "покажи фильмы с участием джеки чана",
    "найди щенка хаски",
    "выключи телевизор",
    "прочитай сказку",
    "закажи пиццу на вечер",
    "включи зарядку для спины",
    "расскажи про эйфелеву башню",
    "открой юмористические видео",
    "подскажи время работы магазина",
    "выключи звук",
    "включи песню про цыган",
]
QUESTIONS = [
    "что такое фотосинтез",
    "кто написал войну и мир",
    "как приготовить щи",
    "почему небо голубое",
    "сколько лет луне",
    "где находится эльбрус",
    "как пройти к центральной площади",
    "когда откроется бассейн",
    "как будет по английски счастье",
    "чем заняться в субботу",
    "какой курс юаня сегодня",
    "где ближайший банкомат",
    "как сварить съедобный гриб",
    "когда начнется хоккей",
    "какие фильмы идут в кинотеатре",
]
DAYS = ["в понедельник", "во вторник", "в среду", "в четверг", "в пятницу", "в субботу", "в воскресенье"]
CURRENCIES = [
    ("рубль", "рубля", "рублей"),
    ("доллар", "доллара", "долларов"),
    ("тенге", "тенге", "тенге"),
    ("евро", "евро", "евро"),
]

UNITS = ["", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]
UNITS_F = ["", "одна", "две"] + UNITS[3:]
TEENS = [
    "десять",
    "одиннадцать",
    "двенадцать",
    "тринадцать",
    "четырнадцать",
    "пятнадцать",
    "шестнадцать",
    "семнадцать",
    "восемнадцать",
    "девятнадцать",
]
TENS = ["", "", "двадцать", "тридцать", "сорок", "пятьдесят", "шестьдесят", "семьдесят", "восемьдесят", "девяносто"]
HUNDREDS = ["", "сто", "двести", "триста", "четыреста", "пятьсот", "шестьсот", "семьсот", "восемьсот", "девятьсот"]


def plural(n: int, forms: tuple[str, str, str]) -> str:
    """Russian plural form for n: 1 рубль, 2 рубля, 5 рублей."""
    if n % 10 == 1 and n % 100 != 11:
        return forms[0]
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return forms[1]
    return forms[2]


def below_thousand(n: int, feminine=False) -> list[str]:
    words = [HUNDREDS[n // 100]]
    rest = n % 100
    if 10 <= rest < 20:
        words.append(TEENS[rest - 10])
    else:
        words += [TENS[rest // 10], (UNITS_F if feminine else UNITS)[rest % 10]]
    return [w for w in words if w]


def number_words(n: int, feminine=False) -> str:
    """Cardinal number in words, 0..999999 (nominative)."""
    if n == 0:
        return "ноль"
    thousands, rest = divmod(n, 1000)
    words = []
    if thousands:
        words += below_thousand(thousands, feminine=True) + [plural(thousands, ("тысяча", "тысячи", "тысяч"))]
    return " ".join(words + below_thousand(rest, feminine))


def make_text(rng: random.Random, test: bool) -> str:
    """A Golos-like request of at most 68 characters, from the test half of the texts (crc32 % TEST_TEXTS == 0)
    or the train half, so that no test sentence is heard in training."""
    first, patronymic = rng.choice(FIRST_NAMES)
    templates = [
        lambda: f"салют вызов {first} {patronymic} {rng.choice(SURNAMES)}",
        lambda: f"джой позвони {first} {patronymic}",
        lambda: f"салют {rng.choice(ACTIONS)}",
        lambda: f"джой {rng.choice(ACTIONS)}",
        lambda: f"какая погода в {rng.choice(CITIES)}",
        lambda: f"сколько стоит {rng.choice(THINGS)}",
        lambda: f"переведи {number_words(n := rng.randint(2, 99999))} {plural(n, rng.choice(CURRENCIES))} {first}",
        lambda: f"{number_words(n := rng.randint(2, 9000))} {plural(n, rng.choice(CURRENCIES))} сколько будет стоить",
        lambda: (
            f"поставь будильник на {number_words(h := rng.randint(1, 12))} {plural(h, ('час', 'часа', 'часов'))}"
            f" {number_words(m := rng.randint(1, 59), feminine=True)} {plural(m, ('минута', 'минуты', 'минут'))}"
        ),
        lambda: f"который час в {rng.choice(CITIES)}",
        lambda: (
            f"напомни купить {rng.choice(THINGS)} через {number_words(m := rng.randint(2, 50), True)} "
            f"{plural(m, ('минуту', 'минуты', 'минут'))}"
        ),
        lambda: (
            f"сколько будет {number_words(rng.randint(2, 999))} {rng.choice(['плюс', 'минус', 'умножить на'])}"
            f" {number_words(rng.randint(2, 999))}"
        ),
        lambda: f"{rng.choice(['салют', 'джой', 'сбер'])} {rng.choice(QUESTIONS)}",
        lambda: rng.choice(QUESTIONS),
        lambda: f"запиши меня к врачу {rng.choice(DAYS)}",
        lambda: (
            f"напиши {first} что я опоздаю на {number_words(m := rng.randint(5, 40), True)} "
            f"{plural(m, ('минуту', 'минуты', 'минут'))}"
        ),
        lambda: f"сколько ехать до {rng.choice(['вокзала', 'аэропорта', 'работы', 'школы', 'дачи'])}",
        lambda: f"какая погода будет {rng.choice(DAYS)} в {rng.choice(CITIES)}",
    ]
    for _ in range(100):
        text = rng.choice(templates)()
        if len(text) <= 68 and (zlib.crc32(text.encode()) % TEST_TEXTS == 0) == test:  # 68: the course's filter
            assert set(text) <= ALPHABET, text
            return text
    raise RuntimeError("no text within 68 characters in this half")


def espeak(text: str, voice: str, rng: random.Random, workdir: Path) -> tuple[np.ndarray, str]:
    """espeak-ng's Russian with a voice variant, a random rate (words per minute) and pitch (0-99)."""
    rate, pitch = rng.randint(125, 195), rng.randint(25, 75)
    wav = workdir / "tts.wav"
    subprocess.run(
        ["espeak-ng", "-v", f"ru+{voice}", "-s", str(rate), "-p", str(pitch), "-w", str(wav), text],
        check=True,
        capture_output=True,
    )
    samples, rate_hz = sf.read(wav, dtype="float64")
    assert rate_hz == 22050, rate_hz
    return resample_poly(samples, 320, 441), f"espeak-ng:{voice}"  # 22.05 kHz -> 16 kHz


def festival(text: str, rng: random.Random, workdir: Path) -> tuple[np.ndarray, str]:
    """festival's msu_ru_nsh_clunits (unit selection from one male speaker's recordings; reads UTF-8 text).
    Its units keep their recorded durations and F0, so the speaker is varied afterwards: the 16 kHz signal is
    resampled by a factor 0.88-1.12 and kept as 16 kHz, which scales pitch, formants (as a shorter or longer
    vocal tract would) and tempo together."""
    txt, wav = workdir / "tts.txt", workdir / "tts.wav"
    txt.write_text(text + "\n", encoding="utf-8")
    subprocess.run(
        ["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", str(txt), "-o", str(wav)], check=True, capture_output=True
    )
    samples, rate_hz = sf.read(wav, dtype="float64")
    assert rate_hz == 16000, rate_hz
    factor = rng.randint(88, 112)  # percent: above 100 higher and faster, below lower and slower
    return resample_poly(samples, 100, factor), f"festival:msu_ru_nsh:{factor}"


def make_distant(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Farfield: reverberation from an exponentially decaying noise impulse response (RT60 0.4-0.9 s),
    a level drop of 12-20 dB and pink-ish room noise at 10-20 dB SNR."""
    rt60 = rng.uniform(0.4, 0.9)
    t = np.arange(int(16000 * rt60)) / 16000
    rir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    rir[0] = 1.0  # the direct path
    wet = fftconvolve(samples, rir)[: samples.size]
    wet *= np.abs(samples).max() / (np.abs(wet).max() + 1e-9) * 10 ** (-rng.uniform(12, 20) / 20)
    noise = np.cumsum(rng.standard_normal(wet.size))  # brown noise, high-passed a little
    noise = noise - np.convolve(noise, np.ones(400) / 400, mode="same")
    snr_db = rng.uniform(10, 20)
    noise *= np.sqrt(np.mean(wet**2) / (np.mean(noise**2) + 1e-12)) * 10 ** (-snr_db / 20)
    return wet + noise


def _ogg_crc(data: bytes) -> int:
    """CRC-32 of Ogg pages: polynomial 0x04C11DB7, no reflection, initial value 0."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def pin_ogg_serial(path: Path, serial: int) -> None:
    """libsndfile gives each Ogg stream a random serial number; set a fixed one (and fix each page's
    CRC) so that the same seed writes the same bytes."""
    data = bytearray(path.read_bytes())
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS", f"{path}: not an Ogg page at byte {pos}"
        segments = data[pos + 26]
        length = 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        data[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        data[pos + 22 : pos + 26] = bytes(4)
        data[pos + 22 : pos + 26] = _ogg_crc(bytes(data[pos : pos + length])).to_bytes(4, "little")
        pos += length
    path.write_bytes(bytes(data))


def made_here(folder: Path) -> bool:
    """Whether `folder` holds a corpus this script made, and nothing else."""
    if folder.is_symlink() or not folder.is_dir() or {p.name for p in folder.iterdir()} != {"train_opus", "test_opus"}:
        return False
    try:
        with open(folder / "train_opus" / "manifest.jsonl", encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and str(first.get("speaker", "")).startswith(("espeak-ng:", "festival:"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ebranchformer_ru/golos/golos_mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N utterances of each split (for checks; needs --out)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is a corpus made by this script")
    args = parser.parse_args()
    if args.limit is not None and (args.limit < 1 or args.out == parser.get_default("out")):
        parser.error("--limit must be at least 1 and needs an --out other than the embedded corpus")
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        if not args.overwrite:
            raise SystemExit(f"{out} exists: pass --overwrite to replace it, or choose another --out")
        if not made_here(out):
            raise SystemExit(
                f"{out} is not a corpus made by this script (train_opus/ and test_opus/ with manifests "
                "whose lines name a synthesiser as speaker): it is left as it is"
            )
    for tool in ("espeak-ng", "text2wave"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install espeak-ng festival festvox-ru")

    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as workdir:
        for split, (count, farfield, family) in SPLITS.items():
            lines = []
            for index in range(count if args.limit is None else min(count, args.limit)):
                # everything random about an utterance depends on (seed, split, index) only
                rng = random.Random(f"{args.seed}:{split}:{index}")
                noise_rng = np.random.default_rng([args.seed, zlib.crc32(split.encode()), index])
                distant = index >= count - farfield
                folder = ("farfield" if distant else "crowd") if split == "train_opus" else "files"
                (tmp_out / split / folder).mkdir(parents=True, exist_ok=True)
                text = make_text(rng, test=split != "train_opus")
                if family == "heldout":
                    samples, speaker = espeak(text, rng.choice(HELDOUT_VOICES), rng, Path(workdir))
                elif rng.random() < FESTIVAL_SHARE:
                    samples, speaker = festival(text, rng, Path(workdir))
                else:
                    samples, speaker = espeak(text, rng.choice(ESPEAK_VOICES), rng, Path(workdir))
                pad = np.zeros(int(16000 * rng.uniform(0.1, 0.4)))  # silence around speech, as recorded
                samples = np.concatenate([pad, samples, pad])
                samples *= rng.uniform(0.3, 0.85) / np.abs(samples).max()  # a recording level
                if distant:
                    samples = make_distant(samples, noise_rng)
                samples = (samples * min(1.0, 0.85 / np.abs(samples).max())).astype(np.float32)  # Opus overshoots a bit
                name = f"{split.replace('/', '_')}_{index:04d}"
                path = tmp_out / split / folder / f"{name}.opus"
                sf.write(path, samples, 16000, format="OGG", subtype="OPUS")
                pin_ogg_serial(path, serial=index + 1)
                duration = sf.info(path).duration
                line = {
                    "id": name,
                    "audio_filepath": f"{folder}/{name}.opus",
                    "text": text,
                    "duration": round(duration, 3),
                }
                if family == "heldout":
                    line["domain"] = "crowd"  # clean speech: what it tests is the voice
                line["speaker"] = speaker  # the builder ignores it; for per-voice analysis
                lines.append(line)
            with open(tmp_out / split / "manifest.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            print(f"{split}: {len(lines)} utterances, {sum(x['duration'] for x in lines) / 60:.1f} min", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp_out, out)  # the finished corpus appears at once, never half-written
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
