"""``spiritlm-agent``: command-line entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Sequence

log = logging.getLogger("spiritlm-agent")

DESCRIPTION = """\
Realtime voice agent for Meta's SpiRit-LM.

Checkpoints use the official release layout; point --checkpoints (or
$SPIRITLM_CHECKPOINTS_DIR) at it, or make random ones for trying things out:
  spiritlm-agent make-checkpoints ckpt --preset tiny
  spiritlm-agent generate --checkpoints ckpt --text "Hello" --output-modality speech -o reply.wav
"""


class _OrderedInput(argparse.Action):
    """Collect --prompt/--text/--speech in the order given on the command line."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind = {"--prompt": "prompt", "--text": "text", "--speech": "speech"}[option_string]
        getattr(namespace, "inputs").append((kind, values))


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", metavar="DIR", help="checkpoint tree (default: $SPIRITLM_CHECKPOINTS_DIR)")
    p.add_argument("--model", choices=("base", "expressive"), default="base", help="SpiRit-LM variant (default: base)")


def build_parser() -> argparse.ArgumentParser:
    def global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
        default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
        p.add_argument("--device", default=default("cpu"), help="torch device: cpu or cuda (default: cpu)")
        p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=default("float32"), help="LM weights dtype (default: float32)")
        p.add_argument("-q", "--quiet", action="store_true", default=default(False), help="only warnings and errors on stderr")
        p.add_argument("--debug", action="store_true", default=default(False), help="debug logs and full tracebacks")
        p.add_argument("--log-json", action="store_true", default=default(False), help="log one JSON object per line (with a 'session' field for server sessions)")

    parser = argparse.ArgumentParser(prog="spiritlm-agent", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)  # the same options are accepted after the command too
    global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub_add = sub.add_parser
    sub.add_parser = lambda *a, **k: sub_add(*a, parents=[common], **k)

    p = sub.add_parser("make-checkpoints", help="write a release-layout checkpoint tree with random weights",
                       description="Write every file of the official layout with random weights: 'tiny' for tests (seconds, a few MB), "
                                   "'base-7b'/'expressive-7b' for real shapes (the LM is ~13.5 GB of bf16; needs that much RAM and disk).")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--preset", choices=("tiny", "base-7b", "expressive-7b"), default="tiny")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("tokenize", help="audio file -> units (JSON) or token string",
                       description="Encode speech like the release's encode_units/encode_string. Any sample rate is resampled to 16 kHz; "
                                   "multi-channel audio is averaged unless --channel picks one.")
    p.add_argument("audio", metavar="AUDIO")
    _add_model_options(p)
    p.add_argument("--format", choices=("units", "string"), default="string")
    p.add_argument("--channel", type=int, help="use this channel of a multi-channel file instead of the average")
    p.add_argument("--f0", choices=("fcpe", "pyaapt"), default="fcpe", help="pitch backbone for the expressive model")

    p = sub.add_parser("vocode", help="token string or units -> 16 kHz WAV",
                       description="Vocode with the release's unit HiFi-GAN; writes mono 32-bit float WAV at 16 kHz.")
    _add_model_options(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--string", metavar="S", help="token string, e.g. '[Hu12][Hu7]'")
    src.add_argument("--units", metavar="JSON", help='units JSON as printed by tokenize --format units, e.g. \'{"hubert": "12 7 7"}\'')
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav")
    p.add_argument("--speaker", type=int, default=2, help="vocoder speaker id (default: 2)")
    p.add_argument("--no-dur-pred", action="store_true", help="do not predict unit durations (units are already at 25 Hz)")

    p = sub.add_parser("generate", help="continue an interleaved text/speech prompt",
                       description="Build a prompt from --prompt/--text/--speech in the order given and generate like the release's "
                                   "Spiritlm.generate. Prints the generated text; -o writes the generated speech.")
    _add_model_options(p)
    p.set_defaults(inputs=[])
    p.add_argument("--prompt", action=_OrderedInput, metavar="STRING", help="raw token string, e.g. '[Speech][Hu12][Hu7]'")
    p.add_argument("--text", action=_OrderedInput, metavar="T", help="text input")
    p.add_argument("--speech", action=_OrderedInput, metavar="WAV", help="speech input (audio file)")
    p.add_argument("--output-modality", choices=("text", "speech", "arbitrary"), default="arbitrary")
    p.add_argument("--max-new-tokens", type=int, default=200)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    mode.add_argument("--temperature", type=float, help="sample with this temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --temperature)")
    p.add_argument("--top-k", type=int, default=50, help="top-k filter when sampling, as transformers' default (0: off)")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--speaker", type=int, default=2, help="vocoder speaker id (default: 2)")
    p.add_argument("--no-force-modality", action="store_true", help="do not ban the other modality's tokens")
    p.add_argument("-o", "--output", metavar="OUT.wav", help="write generated speech (all speech segments, in order)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of plain text")
    p.add_argument("--f0", choices=("fcpe", "pyaapt"), default="fcpe", help="pitch backbone for the expressive model")

    p = sub.add_parser("serve", help="run the realtime websocket server (OpenAI Realtime-compatible)",
                       description="Serve live voice conversations over websockets: the OpenAI Realtime API's GA events at "
                                   "ws://HOST:PORT/v1/realtime (any Realtime client or the openai SDK with "
                                   "websocket_base_url=ws://HOST:PORT/v1), plus /healthz and /metrics (Prometheus). "
                                   "SIGTERM or Ctrl-C ends replies in progress and closes sessions with 1001.")
    _add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--token", default=os.environ.get("SPIRITLM_AGENT_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' (default: $SPIRITLM_AGENT_TOKEN; none: no check)")
    p.add_argument("--max-sessions", type=int, default=8, metavar="N", help="concurrent sessions; more get HTTP 503 (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="sessions decoded in one forward pass (default: %(default)s; 1: no batching, bit-identical to one session alone)")
    p.add_argument("--max-message-mib", type=float, default=8, metavar="MIB", help="largest websocket message in MiB (default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=600, metavar="S", help="close sessions idle this long (default: %(default)s s)")
    p.add_argument("--f0", choices=("fcpe", "pyaapt"), default="fcpe", help="pitch backbone for the expressive model")

    p = sub.add_parser("send", help="send an audio file to a running server as one turn; save the spoken reply",
                       description="Stream AUDIO to a spiritlm-agent server over the realtime websocket protocol as one user "
                                   "turn (manual commit), write the reply audio as a PCM16 WAV at --rate, and print the "
                                   "transcript and the latency (client: from the commit; server: its own timings).")
    p.add_argument("audio", metavar="AUDIO", help="audio file (any rate; channels are averaged)")
    p.add_argument("-o", "--output", metavar="OUT.wav", help="write the reply audio here")
    p.add_argument("--url", default="ws://127.0.0.1:8765/v1/realtime", help="server URL (default: %(default)s)")
    p.add_argument("--token", default=os.environ.get("SPIRITLM_AGENT_TOKEN"), help="bearer token (default: $SPIRITLM_AGENT_TOKEN)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="pace", action="store_const", const="realtime", help="send at speaking speed (the default)")
    pace.add_argument("--fast", dest="pace", action="store_const", const="fast", help="send as fast as the connection allows")
    p.set_defaults(pace="realtime")
    p.add_argument("--rate", type=int, choices=(24000, 16000), default=24000, help="audio rate on the wire, both ways (default: 24000)")
    p.add_argument("--voice", help="reply voice: a speaker index or an OpenAI voice name")
    p.add_argument("--output-modality", choices=("speech", "text", "arbitrary"), help="what the reply is (default: the server's, speech)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (the server's default)")
    mode.add_argument("--temperature", type=float, help="sample with this temperature")
    p.add_argument("--seed", type=int, help="seed for sampling")
    return parser


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, level, logger, message (+ session, error)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if hasattr(record, "session"):
            entry["session"] = record.session
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(args) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if args.log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, whatever a library tries
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _tree(args):
    from agent.spiritlm.checkpoints import CheckpointTree

    return CheckpointTree.locate(args.checkpoints)


def cmd_make_checkpoints(args) -> int:
    from agent.spiritlm.make_checkpoints import make_checkpoints

    make_checkpoints(args.directory, args.preset, args.seed)
    print(args.directory)
    return 0


def cmd_tokenize(args) -> int:
    from agent.spiritlm.audio import load_speech
    from agent.spiritlm.speech_tokenizer import SpeechTokenizer

    tokenizer = SpeechTokenizer.from_tree(_tree(args), args.model, args.f0, args.device)
    wav = load_speech(args.audio, channel=args.channel)
    started = time.perf_counter()
    units = tokenizer.encode_units(wav)
    log.info("encoded %.2fs of audio in %.2fs", len(wav) / 16000, time.perf_counter() - started)
    print(json.dumps(units) if args.format == "units" else tokenizer.units_to_string(units))
    return 0


def cmd_vocode(args) -> int:
    from agent.spiritlm.audio import write_wav
    from agent.spiritlm.speech_tokenizer import parse_units_json, vocode
    from agent.spiritlm.vocoder import CodeHiFiGAN

    vocoder = CodeHiFiGAN.from_tree(_tree(args), args.model).to(args.device)
    code = args.string if args.string is not None else parse_units_json(args.units)
    started = time.perf_counter()
    wav = vocode(vocoder, code, args.speaker, not args.no_dur_pred)
    write_wav(args.output, wav)
    log.info("wrote %s (%.2fs of audio) in %.2fs", args.output, len(wav) / 16000, time.perf_counter() - started)
    return 0


def cmd_generate(args) -> int:
    import numpy as np

    from agent.spiritlm.audio import write_wav
    from agent.spiritlm.errors import InvalidArgumentError
    from agent.spiritlm.lm import SamplingConfig
    from agent.spiritlm.model import PromptPart, SpiritLM

    if not args.inputs:
        raise InvalidArgumentError("give at least one input: --text T, --speech WAV or --prompt STRING")
    if args.temperature is None and (args.seed is not None or args.top_p != 1.0):
        log.warning("--seed/--top-p only apply when sampling (--temperature T); decoding greedily")
    sampling = SamplingConfig(do_sample=args.temperature is not None, temperature=args.temperature or 1.0,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    model = SpiritLM(_tree(args), args.model, args.device, args.dtype, args.f0)
    result = model.generate([PromptPart(kind, content) for kind, content in args.inputs], output_modality=args.output_modality,
                            max_new_tokens=args.max_new_tokens, sampling=sampling, speaker=args.speaker,
                            force_output_modality=not args.no_force_modality)
    speech = [s.audio for s in result.segments if s.kind == "speech"]
    if args.output:
        if speech:
            write_wav(args.output, np.concatenate(speech))
            log.info("wrote %s (%.2fs of speech)", args.output, sum(len(s) for s in speech) / 16000)
        else:
            log.warning("no speech was generated; %s not written", args.output)
    if args.json:
        segments, offset = [], 0
        for s in result.segments:
            if s.kind == "text":
                segments.append({"type": "text", "text": s.text})
            else:
                segments.append({"type": "speech", "samples": len(s.audio), "offset": offset, "duration_s": round(len(s.audio) / 16000, 4)})
                offset += len(s.audio)
        print(json.dumps({"prompt": result.prompt, "generated": result.generated, "token_ids": result.token_ids, "segments": segments}))
    else:
        print(" ".join(s.text for s in result.segments if s.kind == "text") or result.generated)
    return 0


def cmd_send(args) -> int:
    import asyncio

    import soundfile as sf

    from agent.spiritlm.audio import read_audio, to_mono
    from clients.file_client import send_file
    from streaming.audio import float_to_int16

    wav, rate = read_audio(args.audio)
    session: dict = {"audio": {"output": {"voice": args.voice}}} if args.voice else {}
    ext = {k: v for k, v in {"output_modality": args.output_modality, "seed": args.seed}.items() if v is not None}
    if args.greedy:
        ext["greedy"] = True
    if args.temperature is not None:
        ext.update(greedy=False, temperature=args.temperature)
    if ext:
        session["spiritlm"] = ext
    reply = asyncio.run(send_file(args.url, to_mono(wav).numpy(), audio_rate=rate, token=args.token, pace=args.pace,
                                  rate=args.rate, session=session))
    if reply.response.get("status") != "completed":
        log.warning("the response ended %s: %s", reply.response.get("status"), reply.response.get("status_details"))
    if not reply.audio.size:
        log.warning("no audio came back%s", f"; {args.output} not written" if args.output else "")
    elif args.output:
        sf.write(args.output, float_to_int16(reply.audio), reply.rate, subtype="PCM_16")
        log.info("wrote %s (%.2fs of audio)", args.output, reply.audio.size / reply.rate)
    print(reply.transcript or reply.text)
    print(reply.latency_summary())
    return 0


def cmd_serve(args) -> int:
    import asyncio
    import signal

    from agent.server import RealtimeServer, ServerConfig
    from agent.spiritlm.errors import InvalidArgumentError
    from agent.spiritlm.model import SpiritLM

    if args.max_sessions < 1 or args.max_batch < 1 or args.max_message_mib <= 0 or args.idle_timeout <= 0:
        raise InvalidArgumentError("--max-sessions, --max-batch, --max-message-mib and --idle-timeout must be positive")
    started = time.perf_counter()
    model = SpiritLM(_tree(args), args.model, args.device, args.dtype, args.f0)
    log.info("loaded SpiRit-LM %s in %.1f s", args.model, time.perf_counter() - started)
    config = ServerConfig(host=args.host, port=args.port, token=args.token or None, max_sessions=args.max_sessions,
                          max_batch=args.max_batch, max_message_bytes=int(args.max_message_mib * 2**20),
                          idle_timeout_s=args.idle_timeout)

    async def run() -> None:
        server = RealtimeServer(model, config)
        try:
            await server.start()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.shutdown()))
        await server.wait_stopped()

    asyncio.run(run())
    return 0


COMMANDS = {"make-checkpoints": cmd_make_checkpoints, "tokenize": cmd_tokenize, "vocode": cmd_vocode, "generate": cmd_generate,
            "send": cmd_send, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    from agent.spiritlm.errors import SpiritLMError

    try:
        return COMMANDS[args.command](args)
    except SpiritLMError as exc:
        print(f"spiritlm-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(f"spiritlm-agent: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
