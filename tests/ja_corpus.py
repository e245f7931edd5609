"""Synthetic Japanese-looking counseling sessions as a turns CSV and a ratings CSV, for the instrument and mapping of
docs/examples/ja-alliance (20 items on 0-5, dimensions goal, task, bond, engagement; items 19 and 20 in none).

Written here, from small phrase banks of our own; never a third-party corpus. Each session draws a latent level
per dimension; the counselor's and client's lines lean on it (so there is something to learn), and the client's
0-5 ratings are the levels plus noise. Turns carry ISO 8601 times (+09:00) a few seconds to minutes apart;
long sessions are there so that a small context has to cut them.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

DIMENSIONS = {"goal": ["1", "2", "3", "4", "5"], "task": ["6", "7", "8", "9", "10"],
              "bond": ["11", "12", "13", "14", "15"], "engagement": ["16", "17", "18"]}
LOOSE = ["19", "20"]
ITEMS = [str(i) for i in range(1, 21)]

COUNSELOR = {
    "goal": (["今日はどんなことを目標にしましょうか。", "一緒に取り組むことを決めておきましょう。", "目指したい変化を言葉にしてみましょう。"],
             ["とりあえず話を聞きますね。", "まあ、様子を見ましょう。", "特に決めなくてもいいですよ。"]),
    "task": (["次の一週間で試せることを一つ考えてみましょう。", "別の見方をすると、どう見えますか。", "その方法なら続けられそうですか。"],
             ["もっと頑張ればいいと思います。", "それは気の持ちようですね。", "普通はそうしますよね。"]),
    "bond": (["それはとてもつらかったですね。", "話してくださってありがとうございます。", "あなたのペースで大丈夫ですよ。"],
             ["はい、次に進みます。", "それで、ほかには。", "時間があまりないので手短にお願いします。"]),
    "engagement": (["いまの気持ちをもう少し聞かせてください。", "ここまでで気づいたことはありますか。", "さっきの話に戻ってもいいですか。"],
                   ["うんうん。", "なるほど。", "そうですか。"]),
}
CLIENT = {
    "goal": (["そうですね、それを目標にしたいです。", "何を変えたいのかが見えてきました。"], ["何を話せばいいのか分かりません。", "目標と言われても…。"]),
    "task": (["それならやってみられそうです。", "新しい考え方ができた気がします。"], ["それは無理だと思います。", "前にも試したけれどだめでした。"]),
    "bond": (["ここなら安心して話せます。", "分かってもらえてほっとしました。"], ["あまり話したくないです。", "たぶん分かってもらえないと思います。"]),
    "engagement": (["実は、もう一つ話したいことがあります。", "自分でも少し考えてみました。"], ["はい。", "別に…。", "特にないです。"]),
}
OPENING = ["こんにちは、よろしくお願いします。", "最近、仕事のことで眠れない日が続いています。", "家族との関係で悩んでいます。"]
START = datetime(2024, 5, 1, 19, 0, tzinfo=timezone(timedelta(hours=9)))


def _line(bank: dict, level: float, rng: random.Random) -> str:
    dim = rng.choice(list(bank))
    good, bad = bank[dim]
    return rng.choice(good if rng.random() < level[dim] else bad)


def sessions(n: int, seed: int = 0, clients_per: int = 4) -> list[dict]:
    """`n` sessions as dicts: session, client, counselor, turns [(role, text, time)], ratings {item: 0-5}."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        client_effect = random.Random(seed * 1000 + k // clients_per).uniform(-0.2, 0.2)
        level = {d: min(0.95, max(0.05, rng.uniform(0.1, 0.9) + client_effect)) for d in DIMENSIONS}
        n_turns = rng.choice([10, 14, 18, 60]) if k % 7 else 90  # some long ones for the context policy
        t = START + timedelta(days=k)
        turns = [("カウンセラー", rng.choice(OPENING[:1]), t)]
        for i in range(1, n_turns):
            t += timedelta(seconds=rng.randint(5, 180))
            role, bank = ("クライエント", CLIENT) if i % 2 else ("カウンセラー", COUNSELOR)
            turns.append((role, rng.choice(OPENING[1:]) if i == 1 else _line(bank, level, rng), t))
        ratings = {}
        for d, items in DIMENSIONS.items():
            for item in items:
                ratings[item] = min(5, max(0, round(level[d] * 5 + rng.gauss(0, 0.6))))
        overall = sum(level.values()) / len(level)
        for item in LOOSE:
            ratings[item] = min(5, max(0, round(overall * 5 + rng.gauss(0, 0.6))))
        out.append({"session": f"ja{k:04d}", "client": f"cl{k // clients_per:03d}", "counselor": f"co{k % 3}",
                    "turns": turns, "ratings": ratings})
    return out


def write_csvs(directory: Path, rows: list[dict]) -> Path:
    """DIR/turns.csv (session, turn, role, text, sent_at) and DIR/ratings.csv (session, client, counselor,
    q1..q20); a `system` line in each session (the mapping ignores it). Returns DIR."""
    directory.mkdir(parents=True, exist_ok=True)
    turns, ratings = io.StringIO(), io.StringIO()
    tw, rw = csv.writer(turns, lineterminator="\n"), csv.writer(ratings, lineterminator="\n")
    tw.writerow(["session", "turn", "role", "text", "sent_at"])
    rw.writerow(["session", "client", "counselor", *[f"q{i}" for i in ITEMS]])
    for row in rows:
        n = 0
        for role, text, when in row["turns"]:
            tw.writerow([row["session"], n, role, text, when.isoformat()])
            n += 1
            if n == 1:
                tw.writerow([row["session"], n, "system", "録音を開始しました", when.isoformat()])
                n += 1
        rw.writerow([row["session"], row["client"], row["counselor"], *[row["ratings"][i] for i in ITEMS]])
    (directory / "turns.csv").write_text(turns.getvalue(), "utf-8")
    (directory / "ratings.csv").write_text(ratings.getvalue(), "utf-8")
    return directory
