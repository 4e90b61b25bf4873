"""Instruction data: formats, one-line errors naming file/line/field, response-only labels, splits, padding."""

import json
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from transformers import AutoTokenizer

from src.common.errors import UserError
from src.common.gguf_import import import_gguf
from src.common.instruction_data import (
    IGNORE_INDEX,
    CausalLMCollator,
    load_instruction_data,
    read_records,
    tokenize_records,
)
from src.common.testing import CHATML_TEMPLATE, tiny_llama_gguf

ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "2 plus 3 is 5."},
    {"instruction": "Sort these.", "input": "3, 1, 2", "output": "1, 2, 3"},
]


class InstructionDataTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        with mock.patch.dict(os.environ, {"CPU_FINETUNE_GGUF_STORE": cls.tmp.name}):
            folder = import_gguf(tiny_llama_gguf())
        cls.plain = AutoTokenizer.from_pretrained(folder)  # no chat template: the alpaca prompt is used
        cls.chat = AutoTokenizer.from_pretrained(folder)
        cls.chat.chat_template = CHATML_TEMPLATE

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def write(self, name: str, text: str) -> Path:
        path = Path(self.tmp.name) / name
        path.write_text(text, encoding="utf-8")
        return path

    def test_reads_json_list_and_jsonl_of_each_format(self):
        as_list = read_records(self.write("a.json", json.dumps(ALPACA, indent=2)))
        as_lines = read_records(self.write("a.jsonl", "\n".join(json.dumps(r) for r in ALPACA)))
        self.assertEqual([r.value for r in as_list], ALPACA)
        self.assertEqual([r.value for r in as_lines], ALPACA)
        self.assertEqual({r.format for r in as_list}, {"alpaca"})
        chat = read_records(self.write("c.jsonl", json.dumps({"messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})))
        self.assertEqual(chat[0].format, "chat")
        self.assertEqual(read_records(self.write("t.jsonl", '{"text": "Once upon a time."}'))[0].format, "text")

    def test_a_bad_record_names_file_line_and_field(self):
        records = [*ALPACA, {"instruction": "No output here."}]
        path = self.write("bad.json", json.dumps(records, indent=2))
        lines = json.dumps(records, indent=2).splitlines()
        start_line = [i + 1 for i, line in enumerate(lines) if line == "  {"][2]  # where the third record begins
        with self.assertRaises(UserError) as error:
            read_records(path)
        self.assertIn(f"bad.json:{start_line}: missing field 'output'", str(error.exception))

        path = self.write("bad.jsonl", json.dumps(ALPACA[0]) + "\n" + json.dumps({**ALPACA[1], "input": 3}) + "\n")
        with self.assertRaisesRegex(UserError, r"bad\.jsonl:2: field 'input' must be a string, got int"):
            read_records(path)

        path = self.write("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "x"},
                                                                {"role": "bot", "content": "y"}]}))
        with self.assertRaisesRegex(UserError, r"chat\.jsonl:1: field 'messages\[1\]\.role' must be one of"):
            read_records(path)

        with self.assertRaisesRegex(UserError, r"broken\.jsonl:2: invalid JSON"):
            read_records(self.write("broken.jsonl", json.dumps(ALPACA[0]) + "\n{not json\n"))
        with self.assertRaisesRegex(UserError, r"odd\.jsonl:1: unknown record format"):
            read_records(self.write("odd.jsonl", '{"question": "?"}'))

    def test_alpaca_without_template_masks_the_prompt(self):
        records = read_records(self.write("a2.jsonl", json.dumps(ALPACA[0])))
        row = tokenize_records(records, self.plain, max_length=256)[0]
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
        self.assertEqual(self.plain.decode(trained[:-1]).strip(), "2 plus 3 is 5.")
        self.assertEqual(trained[-1], self.plain.eos_token_id)  # the model learns to stop
        first_trained = row["labels"].index(trained[0])
        self.assertIn("### Response:", self.plain.decode(row["input_ids"][:first_trained]))
        self.assertTrue(all(label == IGNORE_INDEX for label in row["labels"][:first_trained]))

    def test_chat_template_trains_only_assistant_turns(self):
        conversation = {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one."},
            {"role": "assistant", "content": "Green."},
        ]}
        records = read_records(self.write("chat2.jsonl", json.dumps(conversation)))
        row = tokenize_records(records, self.chat, max_length=512)[0]
        trained = self.chat.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        self.assertIn("Blue.", trained)
        self.assertIn("Green.", trained)
        for prompt_text in ("Be brief.", "Name a color.", "Another one.", "user"):
            self.assertNotIn(prompt_text, trained)

        all_tokens = tokenize_records(records, self.chat, max_length=512, train_on_prompt=True)[0]
        self.assertNotIn(IGNORE_INDEX, all_tokens["labels"])

    def test_records_cut_off_before_the_response_are_dropped(self):
        long_prompt = {"instruction": "word " * 200, "output": "done"}
        records = read_records(self.write("long.jsonl", json.dumps(long_prompt) + "\n" + json.dumps(ALPACA[0])))
        self.assertEqual(len(tokenize_records(records, self.plain, max_length=96)), 1)

    def test_held_out_split_is_seeded_and_disjoint(self):
        rows = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(50)]
        path = self.write("many.jsonl", "\n".join(json.dumps(r) for r in rows))
        train, held_out = load_instruction_data(str(path), eval_fraction=0.2, seed=1)
        again_train, again_held_out = load_instruction_data(str(path), eval_fraction=0.2, seed=1)
        self.assertEqual((len(train), len(held_out)), (40, 10))
        self.assertEqual([r.value for r in held_out], [r.value for r in again_held_out])
        self.assertFalse({r.value["output"] for r in train} & {r.value["output"] for r in held_out})

    def test_builtin_set_has_its_own_validation_file(self):
        train, held_out = load_instruction_data("builtin:instructions_small", eval_fraction=0.1, seed=0)
        self.assertEqual((len(train), len(held_out)), (320, 64))

    def test_collator_pads_inputs_and_masks_padding(self):
        batch = CausalLMCollator(pad_token_id=0)([
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ])
        self.assertEqual(batch["input_ids"].tolist(), [[5, 6, 7], [8, 0, 0]])
        self.assertEqual(batch["labels"].tolist(), [[-100, 6, 7], [8, -100, -100]])
        self.assertEqual(batch["attention_mask"].tolist(), [[1, 1, 1], [1, 0, 0]])


if __name__ == "__main__":
    unittest.main()
