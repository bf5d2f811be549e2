"""The spiritlm-agent command line: happy paths and one-line errors."""

import json

import pytest
import soundfile as sf

from agent.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(c in out for c in ("checkpoints", "tokenize", "vocode", "generate"))


def test_tokenize_formats(capsys, ckpt_dir, speech):
    code, out, _ = run(capsys, "tokenize", str(speech["hello"][2]), "--checkpoints", str(ckpt_dir), "--model", "expressive", "--format", "units", "-q")
    units = json.loads(out)
    assert code == 0 and set(units) == {"hubert", "pitch", "style"}
    code, out, _ = run(capsys, "tokenize", str(speech["hello"][1]), "--checkpoints", str(ckpt_dir), "-q")
    assert code == 0 and out.startswith("[Hu") and "[Pi" not in out


def test_vocode_writes_float_wav(capsys, ckpt_dir, tmp_path):
    out_path = tmp_path / "v.wav"
    code, _, _ = run(capsys, "vocode", "--checkpoints", str(ckpt_dir), "--string", "[Hu1][Hu2][Hu3]", "-o", str(out_path), "-q")
    info = sf.info(out_path)
    assert code == 0 and info.samplerate == 16000 and info.subtype == "FLOAT" and info.channels == 1
    code, _, _ = run(capsys, "vocode", "--checkpoints", str(ckpt_dir), "--units", '{"hubert": "1 2 3"}', "--no-dur-pred", "-o", str(out_path))
    assert code == 0 and sf.info(out_path).frames == 3 * 640


def test_generate_json(capsys, ckpt_dir, speech, tmp_path):
    out_path = tmp_path / "g.wav"
    code, out, _ = run(capsys, "generate", "--checkpoints", str(ckpt_dir), "--speech", str(speech["hello"][1]), "--text", "and",
                       "--output-modality", "speech", "--max-new-tokens", "20", "-o", str(out_path), "--json", "-q")
    result = json.loads(out)
    assert code == 0 and result["prompt"].endswith("[Text]and[Speech]") and len(result["token_ids"]) == 20
    assert result["segments"][0]["type"] == "speech" and sf.info(out_path).frames == result["segments"][0]["samples"]


@pytest.mark.parametrize("argv,message", [
    (["vocode", "--string", "[Hu1][Hu2x]", "-o", "x.wav"], "malformed unit token"),
    (["vocode", "--string", "[Hu1]", "--speaker", "9", "-o", "x.wav"], "unknown speaker 9"),
    (["vocode", "--units", "{not json", "-o", "x.wav"], "not valid JSON"),
    (["tokenize", "/etc/hostname"], "not a readable audio file"),
    (["generate", "--output-modality", "text"], "give at least one input"),
])
def test_errors_are_one_line(capsys, ckpt_dir, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv, "--checkpoints", str(ckpt_dir))
    lines = [l for l in err.splitlines() if "error" in l]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_missing_checkpoints(capsys, tmp_path):
    code, _, err = run(capsys, "vocode", "--checkpoints", str(tmp_path / "none"), "--string", "[Hu1]", "-o", "x.wav")
    assert code == 2 and "does not exist" in err


def test_short_audio_is_a_clear_error(capsys, ckpt_dir, tmp_path):
    import numpy as np

    sf.write(tmp_path / "short.wav", np.zeros(800, dtype=np.float32), 16000)
    code, _, err = run(capsys, "tokenize", str(tmp_path / "short.wav"), "--checkpoints", str(ckpt_dir))
    assert code == 2 and "at least 1280 samples" in err
