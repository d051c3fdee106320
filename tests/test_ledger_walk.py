"""`ledger verify` walks models/oneseek-certified/ and the adapter links (issue 17, item 4):
a forged certified folder, a file nobody recorded, an adapter link re-pointed at a tampered
copy and a CURRENT pointer leading out of the home are each named; rewrites of the views
(metadata.json, CURRENT moved to another certified run) are not tampering."""

from __future__ import annotations

import json
import os
import shutil

from trainhomes import TinyHome

from oneseekd.certify.layout import CURRENT_LINK, CURRENT_TXT


def problems(home: TinyHome) -> list[str]:
    result = home.ctl("ledger", "verify", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["ok"] else 1)
    return list(report["problems"])


def test_verify_names_every_forgery_in_the_certified_layout(two: TinyHome) -> None:
    _, first = two.train(["tiny-llama"], epochs=2)
    _, second = two.train(["qwen2.5"], epochs=2)
    certified = two.models / "oneseek-certified"
    adapters = two.models / "oneseek-7b-zero" / "lora_adapters"

    ok = two.ctl("ledger", "verify")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[-1] == f"Current: {second}"

    # views rewritten by other programs are not tampering
    meta = certified / first / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "baseModel": "edited"}))
    os.unlink(certified / CURRENT_LINK)
    os.symlink(first, certified / CURRENT_LINK)
    (certified / CURRENT_TXT).write_text(f"{certified / first}\n")
    assert problems(two) == []
    assert json.loads(two.ctl("ledger", "verify", "--json").stdout)["current"] == first

    # a forged certified folder with a copied ledger_proof.json
    forged = "OneSeek-7B-Zero.v9.9.abcdef"
    shutil.copytree(certified / first, certified / forged, symlinks=True)
    assert problems(two) == [
        f"models/oneseek-certified/{forged}/ledger_proof.json proves the certification of "
        f"{first}, not of {forged} (a copied proof)",
        f"models/oneseek-certified/{forged} is a certified folder that no ledger event "
        f"certified (no dna_v2_training_completed names DNA {forged})",
        *(
            f"models/oneseek-certified/{forged} holds {name}, which no ledger event recorded"
            for name in sorted(
                [
                    "live_metrics.json",
                    "loss_curve.png",
                    "oneseek_dna.json",
                    "samples.json",
                    "training_results.json",
                ]
            )
        ),
    ]
    shutil.rmtree(certified / forged)

    # a file nobody recorded, inside a real certified folder
    (certified / second / "notes.txt").write_text("slipped in")
    assert problems(two) == [
        f"models/oneseek-certified/{second} holds notes.txt, which no ledger event recorded"
    ]
    (certified / second / "notes.txt").unlink()

    # the adapter link re-pointed at a tampered copy
    recorded = "oneseek-7b-zero-v1.0-tiny-llama"
    shutil.copytree(adapters / recorded, adapters / "tampered")
    os.unlink(adapters / "tiny-llama-adapter")
    os.symlink("tampered", adapters / "tiny-llama-adapter")
    assert problems(two) == [
        "models/oneseek-7b-zero/lora_adapters/tiny-llama-adapter leads to "
        "models/oneseek-7b-zero/lora_adapters/tampered, not to the newest recorded adapter of "
        f"tiny-llama, models/oneseek-7b-zero/lora_adapters/{recorded}"
    ]
    os.unlink(adapters / "tiny-llama-adapter")
    os.symlink(recorded, adapters / "tiny-llama-adapter")

    # a certified folder's adapter link re-pointed out of the home
    link = certified / first / recorded
    os.unlink(link)
    os.symlink(adapters / "tampered", link)
    assert problems(two) == [
        f"models/oneseek-certified/{first}/{recorded} leads to "
        "models/oneseek-7b-zero/lora_adapters/tampered, not to the recorded adapter folder "
        f"models/oneseek-7b-zero/lora_adapters/{recorded}"
    ]
    os.unlink(link)
    os.symlink(f"../../oneseek-7b-zero/lora_adapters/{recorded}", link)

    # CURRENT pointed out of the home
    os.unlink(certified / CURRENT_LINK)
    os.symlink("/tmp", certified / CURRENT_LINK)
    assert problems(two) == [
        f"{CURRENT_LINK} points at /tmp, which is not a certified folder: CivicAI would load "
        "no certified model of this home"
    ]
