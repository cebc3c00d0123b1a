"""The value model of PPO (advantage=gae): which hidden state each value is read from, and the
critic's start from the policy's weights."""

from __future__ import annotations

import torch

from grpo.config import load_config
from grpo.train.batch import build_batch
from grpo.train.critic import ValueModel, build_critic, critic_values
from grpo.train.distributed import SINGLE


def _critic(tiny_model_dir):
    cfg = load_config(None, ["algorithm.advantage=gae", "model.dtype=float32"])
    return build_critic(cfg, str(tiny_model_dir), 100, SINGLE, torch.device("cpu"), None)


def test_the_critic_starts_from_the_policy_body_with_a_zero_head(tiny_model_dir, tiny_model):
    critic = _critic(tiny_model_dir)
    model = critic.model
    assert isinstance(model, ValueModel)
    policy = tiny_model.base_model.state_dict()
    assert model.body.state_dict().keys() == policy.keys()
    assert all(torch.equal(model.body.state_dict()[k], v) for k, v in policy.items())
    assert float(model.head.weight.detach().abs().sum()) == 0.0
    assert float(model.head.bias.detach()) == 0.0
    assert critic.optimizer.param_groups[0]["lr"] == 1e-3 and critic.value_clip == 0.2
    # the lm-head is not part of the critic
    assert not any("lm_head" in name for name, _ in model.named_parameters())


def test_value_t_is_read_from_the_hidden_state_that_predicts_token_t(tiny_model_dir):
    torch.manual_seed(0)
    model = _critic(tiny_model_dir).model
    torch.nn.init.normal_(model.head.weight)
    prompts, completions = [[5, 6, 7], [8]], [[9, 10, 11, 12], [13, 14]]
    batch = build_batch(prompts, completions, torch.zeros(2), pad_id=0)
    with torch.no_grad():
        values = critic_values(model, batch, autocast_dtype=None)
    assert values.shape == (2, 4)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        # the row alone, unpadded: V_t = head(h of the last token before completion token t)
        ids = torch.tensor([p + c])
        with torch.no_grad():
            h = model.body(input_ids=ids).last_hidden_state[0]
            want = model.head(h).squeeze(-1)[len(p) - 1 : len(p) - 1 + len(c)]
        torch.testing.assert_close(values[i, : len(c)], want, atol=1e-5, rtol=1e-5)
        assert torch.all(values[i, len(c) :] == 0)  # padding
