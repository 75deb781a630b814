"""Generate `data/golos_mini/`: a small corpus in exactly the layout and format of the course's Golos archive.

    data/golos_mini/train_opus/manifest.jsonl          + train_opus/{crowd,farfield}/*.opus
    data/golos_mini/test_opus/crowd/manifest.jsonl     + test_opus/crowd/files/*.opus
    data/golos_mini/test_opus/farfield/manifest.jsonl  + test_opus/farfield/files/*.opus

Train mixes the two domains as Golos does (here 180 crowd + 40 farfield utterances), the domain being
the first folder of `audio_filepath`.
Speech comes from a real Russian synthesiser, espeak-ng, with several voice variants, speaking rates and
pitches, reading Golos-like voice-assistant requests (names and patronymics, numbers, money, time, short
questions, "салют ...", "джой ..."). The farfield test set is made distant: a synthetic room impulse
response (reverberation), a level drop and room noise. Audio is 16 kHz mono Opus, as in Golos.

Needs (only this script): Debian's `espeak-ng` package (apt-get install espeak-ng) and scipy (pip).
The output is the same for the same --seed and espeak-ng version.

    python scripts/make_golos_mini.py [--out data/golos_mini] [--seed 0]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

# split folder -> (utterances, how many of them are farfield)
SPLITS = {"train_opus": (220, 40), "test_opus/crowd": (45, 0), "test_opus/farfield": (45, 45)}
VOICES = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
ALPHABET = set(" абвгдежзийклмнопрстуфхцчшщъыьэюя")

FIRST_NAMES = [
    ("светлане", "васильевне"), ("ивану", "петровичу"), ("анне", "сергеевне"), ("михаилу", "андреевичу"),
    ("ольге", "николаевне"), ("дмитрию", "ивановичу"), ("марии", "александровне"), ("сергею", "викторовичу"),
    ("елене", "павловне"), ("алексею", "михайловичу"), ("татьяне", "юрьевне"), ("николаю", "федоровичу"),
    ("наталье", "олеговне"), ("андрею", "владимировичу"), ("ирине", "борисовне"), ("павлу", "григорьевичу"),
]  # fmt: skip
SURNAMES = ["николенко", "иванову", "смирновой", "кузнецову", "поповой", "соколову", "лебедевой", "козлову",
            "новиковой", "морозову", "волковой", "зайцеву", "павловой", "семенову", "голубевой", "орлову"]  # fmt: skip
CITIES = ["москве", "казани", "самаре", "новосибирске", "екатеринбурге", "сочи", "твери", "омске", "перми"]
THINGS = ["молоко", "хлеб", "билеты в кино", "новый телефон", "пицца", "такси до дома", "цветы", "кофе"]
ACTIONS = ["включи музыку", "выключи свет", "поставь будильник", "найди рецепт борща", "позвони маме",
           "открой погоду", "сделай погромче", "расскажи анекдот", "включи новости", "найди ближайшую аптеку"]  # fmt: skip
CURRENCIES = [("рубль", "рубля", "рублей"), ("доллар", "доллара", "долларов"), ("тенге", "тенге", "тенге"),
              ("евро", "евро", "евро")]  # fmt: skip

UNITS = ["", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]
UNITS_F = ["", "одна", "две"] + UNITS[3:]
TEENS = ["десять", "одиннадцать", "двенадцать", "тринадцать", "четырнадцать", "пятнадцать", "шестнадцать",
         "семнадцать", "восемнадцать", "девятнадцать"]  # fmt: skip
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


def make_text(rng: random.Random) -> str:
    first, patronymic = rng.choice(FIRST_NAMES)
    templates = [
        lambda: f"салют вызов {first} {patronymic} {rng.choice(SURNAMES)}",
        lambda: f"джой позвони {first} {patronymic}",
        lambda: f"салют {rng.choice(ACTIONS)}",
        lambda: f"джой {rng.choice(ACTIONS)}",
        lambda: f"какая погода в {rng.choice(CITIES)}",
        lambda: f"сколько стоит {rng.choice(THINGS)}",
        lambda: f"переведи {number_words(n := rng.randint(2, 99999))} {plural(n, rng.choice(CURRENCIES))}"
        f" {first}",
        lambda: f"{number_words(n := rng.randint(2, 9000))} {plural(n, rng.choice(CURRENCIES))} сколько будет стоить",
        lambda: f"поставь будильник на {number_words(h := rng.randint(1, 12))} {plural(h, ('час', 'часа', 'часов'))}"
        f" {number_words(m := rng.randint(1, 59), feminine=True)} {plural(m, ('минута', 'минуты', 'минут'))}",
        lambda: f"который час в {rng.choice(CITIES)}",
        lambda: f"напомни купить {rng.choice(THINGS)} через {number_words(m := rng.randint(2, 50), True)} "
        f"{plural(m, ('минуту', 'минуты', 'минут'))}",
        lambda: f"сколько будет {number_words(rng.randint(2, 999))} плюс {number_words(rng.randint(2, 999))}",
    ]
    for _ in range(100):
        text = rng.choice(templates)()
        if len(text) <= 68:  # the course's train filter; keep every utterance usable
            assert set(text) <= ALPHABET, text
            return text
    raise RuntimeError("no text within 68 characters")


def synthesise(text: str, voice: str, rate: int, pitch: int, workdir: Path) -> np.ndarray:
    wav = workdir / "tts.wav"
    subprocess.run(["espeak-ng", "-v", f"ru+{voice}", "-s", str(rate), "-p", str(pitch), "-w", str(wav), text],
                   check=True, capture_output=True)  # fmt: skip
    samples, rate_hz = sf.read(wav, dtype="float64")
    assert rate_hz == 22050, rate_hz
    return resample_poly(samples, 320, 441)  # 22.05 kHz -> 16 kHz


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/golos_mini")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")

    rng = random.Random(args.seed)
    noise_rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as workdir:
        for split, (count, farfield) in SPLITS.items():
            lines = []
            for index in range(count):
                distant = index >= count - farfield
                folder = ("farfield" if distant else "crowd") if split == "train_opus" else "files"
                (tmp_out / split / folder).mkdir(parents=True, exist_ok=True)
                text = make_text(rng)
                voice, rate, pitch = rng.choice(VOICES), rng.randint(130, 190), rng.randint(30, 70)
                samples = synthesise(text, voice, rate, pitch, Path(workdir))
                pad = np.zeros(int(16000 * rng.uniform(0.1, 0.4)))  # silence around speech, as recorded
                samples = np.concatenate([pad, samples, pad])
                if distant:
                    samples = make_distant(samples, noise_rng)
                samples = (0.9 * samples / max(1.0, np.abs(samples).max())).astype(np.float32)
                name = f"{split.replace('/', '_')}_{index:04d}"
                path = tmp_out / split / folder / f"{name}.opus"
                sf.write(path, samples, 16000, format="OGG", subtype="OPUS")
                pin_ogg_serial(path, serial=index + 1)
                duration = sf.info(path).duration
                lines.append({"id": name, "audio_filepath": f"{folder}/{name}.opus", "text": text,
                              "duration": round(duration, 3)})  # fmt: skip
            with open(tmp_out / split / "manifest.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            print(f"{split}: {count} utterances, {sum(x['duration'] for x in lines) / 60:.1f} min")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp_out, out)  # the finished corpus appears at once, never half-written
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
