"""Split learning end to end on the in-process Flower grid."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from opacus.accountants import RDPAccountant

from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.vertical import party as party_module
from fedcustomer.vertical.data import plan_parties
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app
from fedcustomer.vertical.protocol import NEXT_JOB_RECORD, message_type
from fedcustomer.vertical.runner import run_vertical_on_grid
from tests.vertical.conftest import RecordingGrid, grid_for, retail_signal_frames, setup_parties


def _job(tmp_path, **kw) -> VerticalJob:
    base = dict(out=str(tmp_path / "run"), rounds=4, batch_size=64, lr=0.01, baseline=False, seed=0)
    return VerticalJob(**(base | kw))


def test_vertical_beats_label_owner_alone_when_retailer_features_carry_signal(tmp_path):
    job = _job(tmp_path, dp=False, rounds=6)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames())
    summary = run_vertical_on_grid(
        grid_for([bank, retail]), job, baseline_grid=grid_for([bank]), psi_size=size
    )
    assert summary["status"] == "completed" and summary["psi_size"] == size
    assert summary["baseline"]["status"] == "completed"
    vertical, bank_only = summary["comparison"]["vertical_auc"], summary["comparison"]["bank_only_auc"]
    assert vertical > 0.8
    assert vertical > bank_only + 0.1


def test_dp_vertical_spends_each_party_budget_up_to_its_target_and_no_further(tmp_path):
    job = _job(tmp_path, epsilon=8.0, rounds=3)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=1000))
    summary = run_vertical_on_grid(grid_for([bank, retail]), job, psi_size=size)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    for party in summary["partners"]:
        assert 0 < party["epsilon_spent"] <= 8.0
        assert party["epsilon_spent"] > 7.0  # the calibrated noise uses the budget, not a fraction of it
    ledger = BudgetLedger(bank.ledger_path, "bank", bank.config().budget_for("bank"))
    mechanisms = {c.mechanism for c in ledger.charges()}
    assert mechanisms == {"vertical_dpsgd", "vertical_label_release"}
    label_charges = [c for c in ledger.charges() if c.mechanism == "vertical_label_release"]
    assert len(label_charges) == 1 and label_charges[0].epsilon == pytest.approx(
        1.0
    )  # once per job, not per round
    label = summary["partners"][0]["accounting"]["label_dp"]
    assert label["enabled"] and label["mechanism"] == "randomized_response" and label["epsilon"] == 1.0


def test_the_label_owners_own_comparison_model_is_paid_from_its_real_ledger(tmp_path):
    """Joint model and bank-only model are two releases about the bank's customers: one ledger holds both."""
    job = _job(tmp_path, epsilon=4.0, rounds=2, baseline=True, baseline_epsilon=1.0)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=800))
    summary = run_vertical_on_grid(
        grid_for([bank, retail]), job, baseline_grid=grid_for([bank]), psi_size=size
    )
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    ledger = BudgetLedger(bank.ledger_path, "bank", bank.config().budget_for("bank"))
    runs = {c.run_id for c in ledger.all_charges()}
    assert runs == {job.run_id, job.run_id + "-baseline"}
    acc = RDPAccountant()
    acc.history = [
        (c.noise_multiplier, c.sample_rate, c.steps)
        for c in ledger.all_charges()
        if c.family == "gaussian_rdp"
    ]
    approx = sum(c.epsilon for c in ledger.all_charges() if c.family == "approx_dp")
    true = (
        acc.get_epsilon(
            job.delta - sum(c.delta or 0 for c in ledger.all_charges() if c.family == "approx_dp")
        )
        + approx
    )
    bank_row = next(p for p in summary["partners"] if p["name"] == "bank")
    # the ledger's total at the joint job's last charge, which came after the comparison model's (beside it)
    assert bank_row["epsilon_spent"] <= bank_row["epsilon_spent_all_releases"]
    assert bank_row["epsilon_spent_all_releases"] == pytest.approx(ledger.spent().epsilon)
    assert ledger.spent().epsilon == pytest.approx(true) and true <= 4.0
    assert not any(p.name.startswith("bank-only") for p in (tmp_path / "homes").iterdir())  # no copied budget


def test_rounds_refused_once_the_budget_is_spent_and_nothing_is_released(tmp_path):
    job = _job(tmp_path, epsilon=2.0, rounds=2)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=800))
    first = run_vertical_on_grid(grid_for([bank, retail]), job)
    assert first["status"] == "completed"
    second_job = _job(tmp_path, epsilon=2.0, rounds=2, out=str(tmp_path / "run2"))
    grid = grid_for([bank, retail])
    second = run_vertical_on_grid(grid, second_job)
    assert second["status"] == "stopped" and second["rounds_completed"] == 0
    assert "refused" in second["stop_reason"]
    sent = [m.metadata.message_type for m, _ in grid.log]
    assert "train.vertical_begin" not in sent and "train.vertical_forward" not in sent
    for home, ds in ((bank, "bank"), (retail, "retailer")):
        ledger = BudgetLedger(home.ledger_path, ds, home.config().budget_for(ds))
        assert ledger.spent().epsilon <= 2.0
    refused = [p for p in second["partners"] if p["rounds_refused"]]
    assert refused and refused[0]["refusals"][0]["round"] == 1
    assert second["model"]["final"] is False


def test_a_party_dropping_out_fails_the_job_without_a_final_model(tmp_path):
    job = _job(tmp_path, dp=False, rounds=3)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=600))
    grid = grid_for([bank, retail], dead_after={2: 12})  # the retailer stops answering mid-round
    with pytest.raises(FederationError, match="retailer did not answer"):
        run_vertical_on_grid(grid, job)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["model"]["final"] is False and summary["metrics"] == {}
    assert not (tmp_path / "run" / "model.pt").exists()
    for home in (bank, retail):
        assert not list((home.state_dir / "vertical").glob("*-final.pt"))


def test_passive_party_sends_no_labels_and_active_party_sends_no_raw_features(tmp_path):
    job = _job(tmp_path, rounds=1, epsilon=5.0)
    frames = retail_signal_frames(n=600)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, frames)
    grid = grid_for([bank, retail])
    run_vertical_on_grid(grid, job)
    by_node = {1: "bank", 2: "retailer"}
    labels = set(frames["bank"]["defaulted"].astype(float))
    seen = {"bank": set(), "retailer": set()}
    for msg, replies in grid.log:
        for reply in replies:
            party = by_node[msg.metadata.dst_node_id]
            if "arrays" not in reply.content:
                continue
            arrays = reply.content["arrays"].to_torch_state_dict()
            seen[party] |= set(arrays)
            for name, t in arrays.items():
                if party == "retailer":
                    assert name == "embeddings" and t.shape[1] == job.embed_dim
                elif name == "gradients":
                    assert t.shape[1] == job.embed_dim
                    # noisy, clipped gradients: not 0/1 label values
                    assert not set(t.flatten().tolist()) <= labels
    assert seen["retailer"] == {"embeddings"}
    assert seen["bank"] == {"batch-positions", "batch-sizes", "gradients"}


def _active_session():
    return next(s for s in party_module._SESSIONS.values() if s.active)


@pytest.mark.parametrize(("label_epsilon", "flip"), [(1.0, 1 / (1 + math.e)), (4.0, 1 / (1 + math.e**4))])
def test_labels_behind_the_gradients_are_randomised_at_the_promised_rate(tmp_path, label_epsilon, flip):
    job = _job(tmp_path, rounds=1, epsilon=5.0, label_epsilon=label_epsilon)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=1500))
    run_vertical_on_grid(grid_for([bank, retail]), job)
    session = _active_session()
    protected, true = np.asarray(session.state["labels"]), session.y.numpy()
    assert set(np.unique(protected)) <= {0.0, 1.0}
    rate = float((protected != true).mean())
    assert abs(rate - flip) < 4 * math.sqrt(flip * (1 - flip) / len(true)) + 0.005


def test_returned_gradients_depend_on_neither_features_nor_true_labels_of_the_label_owner(tmp_path):
    job = _job(tmp_path, rounds=1, epsilon=5.0)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=600))
    run_vertical_on_grid(grid_for([bank, retail]), job)
    session = _active_session()
    pos = session.train_pos[:50]
    emb = torch.randn(len(pos), job.embed_dim)
    head, opt = copy.deepcopy(session.head.state_dict()), copy.deepcopy(session.head_optimizer.state_dict())
    before = session.label_gradients(pos, emb)
    session.head.load_state_dict(head)
    session.head_optimizer.load_state_dict(opt)
    session.X = torch.randn_like(session.X)  # other features ...
    session.y = 1 - session.y  # ... and every true label flipped
    assert torch.equal(session.label_gradients(pos, emb), before)


def test_clv_labels_are_clipped_and_noised_with_the_calibrated_gaussian(tmp_path):
    job = _job(tmp_path, task="clv", rounds=1, epsilon=4.0, label_epsilon=1.0, label_bound=10.0)
    active, passive = plan_parties(job)
    frames = retail_signal_frames(n=800)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, frames)
    summary = run_vertical_on_grid(grid_for([bank, retail]), job)
    assert summary["status"] == "completed" and active.name == "retailer"
    label = next(p for p in summary["partners"] if p["role"] == "active")["accounting"]["label_dp"]
    assert label["mechanism"] == "gaussian" and label["bound"] == 10.0
    sigma = label["noise_std"] / 10.0
    assert accounting.epsilon([accounting.GaussianSteps(sigma, 1.0, 1)], 1e-5) == pytest.approx(1.0, rel=1e-3)
    session = _active_session()
    residual = np.asarray(session.state["labels"]) - session.y.clamp(0, 10.0).numpy()
    assert abs(residual.std() - label["noise_std"]) < 0.1 * label["noise_std"]
    for p in summary["partners"]:
        assert p["epsilon_spent"] <= 4.0


def test_job_options_are_checked():
    with pytest.raises(ConfigError, match="--data"):
        VerticalJob(data="cdnow")
    with pytest.raises(ConfigError, match="spend label"):
        VerticalJob(data="uci-credit", task="clv")
    with pytest.raises(ConfigError, match="--embedding-noise"):
        VerticalJob(embedding_noise=-1.0)
    with pytest.raises(ConfigError, match="--label-epsilon"):
        VerticalJob(epsilon=1.0, label_epsilon=1.0)
    VerticalJob(
        epsilon=1.0, label_epsilon=1.0, label_dp=False, baseline=False
    )  # no label release, nothing to split
    with pytest.raises(
        ConfigError, match="--baseline-epsilon"
    ):  # the comparison model is paid from the same budget
        VerticalJob(epsilon=2.0, label_epsilon=1.0, baseline_epsilon=1.0)
    VerticalJob(epsilon=2.0, label_epsilon=1.0, baseline=False)


def test_wrong_alignment_is_reported_not_trained_on(tmp_path):
    job = _job(tmp_path, dp=False, rounds=1)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=600))
    path = next((retail.state_dir / "vertical").glob("alignment-*.json"))
    doc = json.loads(path.read_text())
    doc["pseudonyms"] = doc["pseudonyms"][:-5]
    path.write_text(json.dumps(doc))
    with pytest.raises(FederationError, match="different aligned sets"):
        run_vertical_on_grid(grid_for([bank, retail]), job)


def test_local_runs_align_parties_with_the_messaged_psi_and_keep_only_pseudonyms(tmp_path):
    from fedcustomer.vertical.data import alignment_path, party_frames
    from fedcustomer.vertical.runner import prepare_vertical

    job = _job(tmp_path, customers=600, baseline=False)
    setup = prepare_vertical(job)
    frames = party_frames(job)
    shared = set(frames["bank"]["customer_id"].astype(str)) & set(
        frames["retailer"]["customer_id"].astype(str)
    )
    assert setup.psi_size == len(shared) > 0
    bank = json.loads(alignment_path(setup.active, "bank", "retailer").read_text())["pseudonyms"]
    retail = json.loads(alignment_path(setup.passive, "retailer", "bank").read_text())["pseudonyms"]
    assert len(bank) == len(retail) == len(shared)
    assert not shared & set(bank) and not shared & set(retail)  # pseudonyms, never the raw ids
    assert not list((setup.active.state_dir / "psi").glob("*.party.json"))  # session secrets are gone


def test_a_later_vertical_job_on_the_same_homes_keeps_the_held_out_split(tmp_path):
    """Every PSI agrees on a fresh order; the split drawn over it must not move between jobs."""
    from fedcustomer.vertical.data import alignment_path
    from fedcustomer.vertical.runner import prepare_vertical

    job = VerticalJob(customers=500, out=str(tmp_path / "r1"), homes=str(tmp_path / "homes"), seed=3)
    first = prepare_vertical(job)
    path = alignment_path(first.active, "bank", "retailer")
    before = json.loads(path.read_text())["pseudonyms"]
    prepare_vertical(
        VerticalJob(customers=500, out=str(tmp_path / "r2"), homes=str(tmp_path / "homes"), seed=3)
    )
    assert json.loads(path.read_text())["pseudonyms"] == before
    with pytest.raises(ConfigError, match="--seed 3"):
        prepare_vertical(
            VerticalJob(customers=500, out=str(tmp_path / "r3"), homes=str(tmp_path / "homes"), seed=4)
        )
    assert json.loads(path.read_text())["pseudonyms"] == before


def test_a_label_head_step_asked_again_after_a_restart_moves_the_head_once(tmp_path):
    job = _job(tmp_path, rounds=1, epsilon=5.0)
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=600))
    run_vertical_on_grid(grid_for([bank, retail]), job)
    session = _active_session()
    kept = session.state["head_steps"]
    assert kept["round"] == 1 and len(kept["grads"]) == len(session.state["plans"]["1"])
    first = kept["grads"]["0"].clone()
    pos = session.state["plans"]["1"][0]
    head = copy.deepcopy(session.head.state_dict())
    party_module.forget_sessions()  # as a node that restarted: the state comes back from disk
    session = party_module.session_for(session.home, session.cfg)
    other = torch.randn(len(pos), session.cfg.passive_embed_dim)  # whatever the relay sends this time
    assert torch.equal(session.step(1, 0, other), first)
    for name, value in session.head.state_dict().items():
        assert torch.equal(value, head[name]), name  # the head did not step again
    with pytest.raises(ConfigError, match="has no step"):
        session.step(1, len(session.state["plans"]["1"]), other)


def _chain(grid) -> list[tuple[str, str, int, list[str]]]:
    """Each exchange: its message type, the role asked first, how many replied, the follow-ups asked."""
    out = []
    for m, replies in grid.log:
        cfg = dict(m.content["config"])
        then = sorted(k for k, v in cfg.items() if k.startswith("then-") and v)
        out.append((m.metadata.message_type, str(cfg.get("role", "")), len(replies), then))
    return out


def _round(more: bool, beside: tuple[int, int, int] = (1, 1, 1)) -> list[tuple[str, str, int, list[str]]]:
    """A round of 2 passive steps; ``beside``: replies to each message to the passive party (2: the label
    owner's comparison model rode in the same exchange)."""
    return [
        (
            "train.vertical_begin",
            "passive",
            beside[0],
            ["then-forward"],
        ),  # charged, then batch 0's embeddings
        ("train.vertical_step", "active", 1, []),
        (
            "train.vertical_backward",
            "passive",
            beside[1],
            ["then-forward"],
        ),  # step 0 taken, step 1's embeddings
        ("train.vertical_step", "active", 1, []),
        (
            "train.vertical_backward",
            "passive",
            beside[2],
            ["then-check", "then-embed"] if more else ["then-embed"],
        ),
        ("train.vertical_fit", "active", 1, ["then-begin"] if more else []),  # opens the next round
    ]


def test_a_round_is_one_message_per_party_step_and_the_fit_opens_the_next_round(tmp_path):
    """Each message carries what its party does next; checks (both, one exchange) still come before any begin."""
    job = _job(tmp_path, dp=False, rounds=3, steps_per_round=2, baseline=True)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=400))
    grid, alone = grid_for([bank, retail]), grid_for([bank])
    summary = run_vertical_on_grid(grid, job, baseline_grid=alone, psi_size=size)
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    start = [("query.vertical_hello", "", 2, []), ("query.vertical_setup", "active", 2, ["then-check"])]
    opening = [("train.vertical_begin", "active", 1, [])]  # round 1's checks came with the setup
    end = [("train.vertical_finish", "active", 2, [])]
    # the label owner alone (its comparison model): no setup (the joint job's counts), no check (its
    # begin refuses by itself); its begin, then each fit with the next begin, the last with its finish,
    # ride with the messages to the passive party (4 messages: round 1's last two and round 2's first
    # two; round 1's first is left to it, which it spends calibrating the comparison model's noise)
    rounds = _round(True, (1, 2, 2)) + _round(True, (2, 2, 1)) + _round(False)
    assert _chain(grid) == start + opening + rounds + end
    assert [r["round"] for r in summary["partners"][0]["refusals"]] == []
    assert NEXT_JOB_RECORD not in grid.log[-1][0].content and alone.log == []  # nothing left after the finish
    assert summary["baseline"]["partners"][0]["accounting"]["role"] == "active"
    assert summary["baseline"]["partners"][0]["rounds_trained"] == 3


@pytest.mark.parametrize("refuser", ["passive", "active"])
def test_a_next_round_refused_in_a_folded_message_is_paid_by_nobody(tmp_path, monkeypatch, refuser):
    """The passive party's check rides on its last backward, the label owner's begin on its fit: a refusal
    of round 2 by either is on record, and neither party pays round 2."""
    from fedcustomer.vertical.spend import PartySpend, RoundDecision

    real_check, real_charge = PartySpend.check_round, PartySpend.charge_round

    def refusing(real):
        def answer(self, rnd):
            if self.cfg.role == refuser and rnd == 2:
                return RoundDecision(
                    False, "budget kept for another study", {"epsilon-total": 0.5, "epsilon-target": 8.0}
                )
            return real(self, rnd)

        return answer

    monkeypatch.setattr(PartySpend, "check_round", refusing(real_check))
    monkeypatch.setattr(PartySpend, "charge_round", refusing(real_charge))
    job = _job(tmp_path, epsilon=8.0, rounds=3, steps_per_round=1)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=400))
    grid = grid_for([bank, retail])
    summary = run_vertical_on_grid(grid, job, psi_size=size)
    name = "retailer" if refuser == "passive" else "bank"
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 1
    assert summary["stop_reason"] == f"round 2: {name} refused: budget kept for another study"
    chain = _chain(grid)
    fit = next(c for c in chain if c[0] == "train.vertical_fit")
    assert fit[3] == (["then-check"] if refuser == "passive" else ["then-begin"])
    begins = [
        dict(m.content["config"]) for m, _ in grid.log if m.metadata.message_type == "train.vertical_begin"
    ]
    assert [(b["role"], b["round"]) for b in begins] == [("active", 1), ("passive", 1)]  # round 2: none
    assert chain[-1][0] == "train.vertical_finish"  # both still keep their parts of round 1
    for home, ds in ((bank, "bank"), (retail, "retailer")):
        ledger = BudgetLedger(home.ledger_path, ds, home.config().budget_for(ds))
        rounds = sorted(c.charge_key.rsplit(":", 1)[1] for c in ledger.charges() if ":round:" in c.charge_key)
        assert rounds == ["1"], (ds, rounds)


def test_a_follow_up_beyond_the_last_round_is_refused_with_a_clear_error(tmp_path):
    job = _job(tmp_path, dp=False, rounds=1, steps_per_round=1)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=400))
    grid = grid_for([bank, retail])
    assert run_vertical_on_grid(grid, job, psi_size=size)["status"] == "completed"
    fit = next(m for m, _ in grid.log if m.metadata.message_type == "train.vertical_fit")
    cfg = dict(fit.content["config"])
    for flags, match in (
        ({"then-begin": True}, "no next round"),
        ({"then-begin": True, "then-check": True}, "not both"),
    ):
        content = RecordDict({"config": ConfigRecord(cfg | flags), "arrays": fit.content["arrays"]})
        msg = Message(content, dst_node_id=fit.metadata.dst_node_id, message_type="train.vertical_fit")
        reply = grid.send_and_receive([msg])
        (answer,) = list(reply)
        assert answer.has_error() and match in answer.error.reason


def test_a_malformed_following_job_is_refused_before_the_finish_runs(tmp_path):
    job = _job(tmp_path, dp=False, rounds=1, steps_per_round=1, baseline=True)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=400))

    class EveryMessage(RecordingGrid):
        sent: list[Message] = []

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            self.sent = self.sent + messages
            return super().send_and_receive(messages, timeout=timeout)

    grid = EveryMessage(party_app([str(bank.root), str(retail.root)]), num_nodes=2)
    summary = run_vertical_on_grid(grid, job, baseline_grid=grid_for([bank]), psi_size=size)
    assert summary["baseline"]["status"] == "completed"
    finish = next(m for m in grid.sent if m.metadata.message_type == "train.vertical_finish")
    base_id = job.run_id + "-baseline"  # its first begin (beside the joint job) is what a finish would carry
    begin = next(m for m in grid.sent if dict(m.content["config"]).get("run-id") == base_id)
    cfg, following = dict(finish.content["config"]), dict(begin.content["config"])
    final = bank.state_dir / "vertical" / f"run-{job.run_id}-active-final.pt"
    final.unlink()
    for action, nxt, match in (
        ("vertical_finish", following | {"run-id": job.run_id}, "another run of the same label owner"),
        ("vertical_finish", following | {"round": 2}, "has no round 2"),
        ("vertical_finish", {k: v for k, v in following.items() if k != "round"}, "needs the round"),
        ("vertical_check", following, "only vertical_finish may begin a following job"),
    ):
        content = RecordDict({"config": ConfigRecord(cfg), NEXT_JOB_RECORD: ConfigRecord(nxt)})
        msg = Message(content, dst_node_id=finish.metadata.dst_node_id, message_type=message_type(action))
        (answer,) = list(grid.send_and_receive([msg]))
        assert answer.has_error() and match in answer.error.reason
        assert not final.exists()  # the finish did not run


def test_a_party_checking_its_first_round_at_another_rate_stops_the_job_before_any_charge(
    tmp_path, monkeypatch
):
    from fedcustomer.vertical import protocol

    job = _job(tmp_path, epsilon=8.0, rounds=2, steps_per_round=1)
    bank, retail, size = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=400))
    monkeypatch.setattr(protocol, "public_sampling", lambda batch, n_train, steps: (0.5, 3))
    grid = grid_for([bank, retail])
    with pytest.raises(FederationError, match="checked round 1 at sample rate 0.5 x 3 steps"):
        run_vertical_on_grid(grid, job, psi_size=size)
    assert [m.metadata.message_type for m, _ in grid.log][-1] == "query.vertical_setup"
    for home, ds in ((bank, "bank"), (retail, "retailer")):
        assert BudgetLedger(home.ledger_path, ds, home.config().budget_for(ds)).charges() == []
