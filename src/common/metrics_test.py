import unittest

from src.common.metrics import classification_metrics, confusion_matrix, format_confusion_matrix


class ConfusionMatrixTest(unittest.TestCase):
    def test_rows_are_true_labels_and_columns_predictions(self):
        labels = [0, 0, 0, 1, 1]
        preds = [0, 1, 1, 1, 0]
        self.assertEqual(confusion_matrix(preds, labels).tolist(), [[1, 2], [1, 1]])

    def test_three_labels(self):
        labels = [0, 1, 2, 2, 1, 0]
        preds = [0, 2, 2, 1, 1, 0]
        self.assertEqual(confusion_matrix(preds, labels, num_labels=3).tolist(), [[2, 0, 0], [0, 1, 1], [0, 1, 1]])

    def test_rejects_out_of_range_and_mismatched_inputs(self):
        with self.assertRaises(ValueError):
            confusion_matrix([0, 2], [0, 1])
        with self.assertRaises(ValueError):
            confusion_matrix([0, 1, 1], [0, 1])


class ClassificationMetricsTest(unittest.TestCase):
    def test_binary_scores_the_positive_class(self):
        # tp=2 (idx 3, 4), fp=1 (idx 1), fn=1 (idx 5), tn=2 (idx 0, 2)
        labels = [0, 0, 0, 1, 1, 1]
        preds = [0, 1, 0, 1, 1, 0]
        m = classification_metrics(preds, labels)
        self.assertAlmostEqual(m["accuracy"], 4 / 6)
        self.assertAlmostEqual(m["precision"], 2 / 3)
        self.assertAlmostEqual(m["recall"], 2 / 3)
        self.assertAlmostEqual(m["f1"], 2 / 3)
        self.assertEqual(m["confusion_matrix"], [[2, 1], [1, 2]])

    def test_macro_average_for_more_than_two_labels(self):
        labels = [0, 1, 2, 2]
        preds = [0, 1, 1, 2]
        m = classification_metrics(preds, labels, num_labels=3)
        # per class precision: 1, 1/2, 1; recall: 1, 1, 1/2; f1: 1, 2/3, 2/3
        self.assertAlmostEqual(m["precision"], (1 + 0.5 + 1) / 3)
        self.assertAlmostEqual(m["recall"], (1 + 1 + 0.5) / 3)
        self.assertAlmostEqual(m["f1"], (1 + 2 / 3 + 2 / 3) / 3)
        self.assertAlmostEqual(m["accuracy"], 0.75)

    def test_zero_division_gives_zero(self):
        # Never predicts the positive class: precision has a 0 denominator; so do recall and F1 here.
        m = classification_metrics([0, 0, 0], [0, 0, 0])
        self.assertEqual((m["accuracy"], m["precision"], m["recall"], m["f1"]), (1.0, 0.0, 0.0, 0.0))
        empty = classification_metrics([], [])
        self.assertEqual(empty["accuracy"], 0.0)
        self.assertEqual(empty["confusion_matrix"], [[0, 0], [0, 0]])

    def test_values_are_plain_python_types(self):
        m = classification_metrics([1, 0], [1, 1])
        self.assertIs(type(m["accuracy"]), float)
        self.assertIs(type(m["confusion_matrix"][0][0]), int)


class FormatConfusionMatrixTest(unittest.TestCase):
    def test_table_has_a_row_per_true_label(self):
        text = format_confusion_matrix([[12, 3], [4, 150]], ["negative", "positive"])
        lines = text.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertIn("negative", lines[0])
        self.assertEqual(lines[1].split(), ["negative", "12", "3"])
        self.assertEqual(lines[2].split(), ["positive", "4", "150"])


if __name__ == "__main__":
    unittest.main()
