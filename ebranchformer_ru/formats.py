"""What transcripts are written as: JSON lines, `path<TAB>text` lines, and SRT/VTT subtitles cut into cues at pauses.
`ebranchformer-transcribe` writes them to files, the server answers with them."""

import json


def format_time(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitle_cues(words, max_pause=0.6, max_duration=6.0, max_chars=84) -> list[tuple[float, float, str]]:
    """Words grouped into cues: a new cue after a pause longer than `max_pause` seconds, and a run of words that
    would last longer than `max_duration` or hold more than `max_chars` characters cut by `_fitted`."""
    runs, current = [], []
    for word in words:
        if current and word["start"] - current[-1]["end"] > max_pause:
            runs.append(current)
            current = []
        current.append(word)
    if current:
        runs.append(current)
    cues = [cue for run in runs for cue in _fitted(run, max_duration, max_chars)]
    return [(c[0]["start"], c[-1]["end"], " ".join(w["word"] for w in c)) for c in cues]


def _fitted(words, max_duration, max_chars) -> list[list[dict]]:
    """`words` cut into cues within the limits. Each cue ends at the widest gap between words among the places
    where it still fits (the latest of gaps equal to the millisecond), not at the last word that fits: the widest
    gap is where the speaker paused, so a cue rarely starts or ends mid-phrase, and it is never longer than the
    limits. A lone word over the limits is a cue of its own."""

    def fits(cue):
        return cue[-1]["end"] - cue[0]["start"] <= max_duration and len(" ".join(w["word"] for w in cue)) <= max_chars

    def gap(i):  # before words[i]; to the millisecond, so that float noise does not break ties
        return round(words[i]["start"] - words[i - 1]["end"], 3)

    cues = []
    while words:
        cut = 1  # words[:cut] fits
        while cut < len(words) and fits(words[: cut + 1]):
            cut += 1
        if cut < len(words):
            cut = max(range(cut, 0, -1), key=gap)
        cues.append(words[:cut])
        words = words[cut:]
    return cues


def cues(record: dict) -> list[tuple[float, float, str]]:
    """A record's subtitle cues: with voice-activity segments, each segment's words cut by `subtitle_cues` (a cue
    never spans a pause between segments); otherwise all its words."""
    words = record.get("words", [])
    if "segments" not in record:
        return subtitle_cues(words)
    out = []
    for segment in record["segments"]:
        inside = [w for w in words if segment["start"] <= w["start"] and w["end"] <= segment["end"] + 1e-6]
        out += subtitle_cues(inside)
    return out


def render(records: list[dict], suffix: str) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if suffix == ".txt":
        return "".join(f"{r['path']}\t{r['text']}\n" for r in records)
    separator = "," if suffix == ".srt" else "."
    blocks = [] if suffix == ".srt" else ["WEBVTT\n"]
    for record in records:
        for number, (start, end, text) in enumerate(cues(record), 1):
            timing = f"{format_time(start, separator)} --> {format_time(end, separator)}"
            blocks.append(f"{number}\n{timing}\n{text}\n" if suffix == ".srt" else f"{timing}\n{text}\n")
    return "\n".join(blocks)


def escaped(path: str) -> str:
    """A path on one stdout line: backslash, tab and line breaks escaped."""
    return path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
