"""What the model sees: a system prompt with the exact action syntax, then one user turn per page observation.

An episode is ONE token sequence: the first turn's prompt, then per turn the model's action tokens followed by
the environment's next turn (end of the assistant turn, a user message with the new page, the assistant
header). `Turns` renders those pieces with the tokenizer's own chat template, so the model is conditioned on
exactly the tokens it is trained on.
"""

from __future__ import annotations

import re

SYSTEM_PROMPT = """You operate a web browser to reach a goal. You see the page's accessibility tree: each element \
has an id in brackets, e.g. [13] button 'Click Me!' has id '13'.
Answer with exactly ONE action, nothing else. The id is always a quoted string:
click('13')
fill('14', 'text to type')
press('14', 'Enter')
focus('12')
select_option('7', 'Option name')
noop()"""

# Two worked turns before the real one. A 135M model ignores an example written into the system prompt but
# copies the shape of earlier chat turns: greedy format errors 100% -> 0% on 16 episodes of easy tasks.
FEW_SHOT = [
    ("Goal: Click the button labelled \"OK\".\n\nPage observation:\nRootWebArea 'Example Task', focused\n"
     "\t[7] button 'Cancel'\n\t[9] button 'OK'", "click('9')"),
    ("Goal: Enter \"Kim\" into the text field.\n\nPage observation:\nRootWebArea 'Example Task', focused\n"
     "\t[12] textbox ''", "fill('12', 'Kim')"),
]

_PLACEHOLDER = "\x00ACTION\x00"
# The root's url attribute, and every file:// url (MiniWoB's links carry one: ".../click-tab.html#tabs-2"), is a
# path of this machine: noise for the model that would make prompts (and their token counts) differ between
# installs. Left in, a click-tab page is ~340 tokens and its later tabs fall past obs_max_tokens = 192; without
# them ~205 tokens and every tab fits.
_ROOT_URL = re.compile(r", url='[^']*'")
_FILE_URL = re.compile(r", url='file://[^']*'")


def truncate_to_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` tokens (at a line end when possible), marked when cut."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    cut = tokenizer.decode(ids[:max_tokens])
    if "\n" in cut:
        cut = cut[: cut.rindex("\n")]
    return cut + "\n... (page truncated)"


def user_message(observation: dict, tokenizer, obs_max_tokens: int, previous_action: str | None = None,
                 previous_error: str | None = None) -> str:
    """The user turn: goal, page (accessibility tree within a token budget), and the previous action's outcome."""
    tree = _FILE_URL.sub("", _ROOT_URL.sub("", observation.get("axtree_txt") or "", count=1))
    page = truncate_to_tokens(tokenizer, tree, obs_max_tokens)
    text = f"Goal: {observation.get('goal', '')}\n\nPage observation:\n{page}"
    if previous_action is not None:
        text += f"\n\nPrevious action: {previous_action}"
        if previous_error:
            text += f"\nError: {previous_error.strip()[:300]}"
    return text


class Turns:
    """Token pieces of a multi-turn episode, derived once from the tokenizer's chat template."""

    def __init__(self, tokenizer, system_prompt: str = SYSTEM_PROMPT, examples=FEW_SHOT):
        self.tokenizer = tokenizer
        self.system = [{"role": "system", "content": system_prompt}]  # + the worked example turns
        for user, assistant in examples:
            self.system += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        base = self._render(self.system + [{"role": "user", "content": "u"},
                                           {"role": "assistant", "content": _PLACEHOLDER}])
        if _PLACEHOLDER not in base:
            raise ValueError("the tokenizer's chat template drops assistant content; cannot build multi-turn episodes")
        # Text the template puts after an assistant message (e.g. "<|im_end|>\n").
        self.assistant_end = base[base.index(_PLACEHOLDER) + len(_PLACEHOLDER):]
        self.eos_ids = _eos_ids(tokenizer)
        # How a demonstrated or explored action ends: the template's end-of-turn token, else EOS.
        self.action_end = (tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab()
                           else tokenizer.eos_token_id)

    def _render(self, messages, add_generation_prompt=False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def first_prompt(self, user_text: str) -> list[int]:
        """System + first user turn + assistant header."""
        return self._encode(self._render(self.system + [{"role": "user", "content": user_text}], True))

    def next_turn(self, user_text: str, action_ended_with_eos: bool) -> list[int]:
        """Tokens between one action and the next: end of the assistant turn, the new user turn, the assistant header.

        When the model ended its action with EOS, that token is already in the sequence and is not repeated.
        """
        convo = self.system + [{"role": "user", "content": "u"}, {"role": "assistant", "content": _PLACEHOLDER}]
        full = self._render(convo + [{"role": "user", "content": user_text}], True)
        tail = full[full.index(_PLACEHOLDER) + len(_PLACEHOLDER):]
        ids = self._encode(tail)
        if action_ended_with_eos and ids and ids[0] in self.eos_ids:
            ids = ids[1:]
        return ids

    def action_ids(self, action: str) -> list[int]:
        """An action written by someone other than the model (a demonstration, an explored element), as the tokens
        the model would have ended it with: its text, then the end of the assistant turn."""
        return self._encode(action) + [self.action_end]

    def ends_with_eos(self, ids: list[int]) -> bool:
        return bool(ids) and ids[-1] in self.eos_ids


def _eos_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return {i for i in ids if i is not None}
