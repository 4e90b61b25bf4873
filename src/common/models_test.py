"""load_sequence_classifier's training options on a tiny random BERT: dropout and the attention kernel."""

import tempfile
import unittest
from pathlib import Path

import torch

from src.common.data import ID2LABEL, LABEL2ID
from src.common.models import dropout_layers, load_sequence_classifier
from src.common.testing import make_tiny_bert


class SequenceClassifierOptionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.source = str(make_tiny_bert(Path(cls.tmp.name) / "tiny_bert"))
        cls.inputs = {"input_ids": torch.randint(5, 100, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
        cls.inputs["attention_mask"][0, -4:] = 0  # one padded example

    def load(self, **options):
        return load_sequence_classifier(self.source, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, **options)

    def train_mode_logits_twice(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        model.train()
        with torch.no_grad():
            return model(**self.inputs).logits, model(**self.inputs).logits

    def test_dropout_zero_makes_training_forward_passes_deterministic(self):
        first, second = self.train_mode_logits_twice(self.load(dropout=0.0))
        torch.testing.assert_close(first, second, rtol=0, atol=0)

    def test_dropout_none_keeps_the_models_own(self):
        model = self.load(dropout=None)
        probabilities = {layer.p for layer in dropout_layers(model)}
        self.assertEqual(probabilities, {model.config.hidden_dropout_prob})
        self.assertGreater(model.config.hidden_dropout_prob, 0)
        first, second = self.train_mode_logits_twice(model)
        self.assertFalse(torch.equal(first, second))

    def test_dropout_value_reaches_every_dropout_layer_but_not_the_saved_config(self):
        model = self.load(dropout=0.3)
        layers = dropout_layers(model)
        self.assertGreaterEqual(len(layers), 2 * model.config.num_hidden_layers + 2)  # per layer x2, embeddings, head
        self.assertEqual({m.p for m in layers}, {0.3})
        self.assertEqual(model.config.hidden_dropout_prob, 0.1)  # a saved model keeps the architecture's own

    def test_eager_and_sdpa_attention_agree(self):
        eager, sdpa = self.load(attn_implementation="eager"), self.load(attn_implementation="sdpa")
        self.assertEqual((eager.config._attn_implementation, sdpa.config._attn_implementation), ("eager", "sdpa"))
        eager.eval(), sdpa.eval()
        with torch.no_grad():
            torch.testing.assert_close(eager(**self.inputs).logits, sdpa(**self.inputs).logits, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
