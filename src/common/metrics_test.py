import unittest

from src.common.metrics import (
    classification_metrics,
    confusion_matrix,
    format_confusion_matrix,
    format_per_class,
    summary_metric_names,
)


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

    def test_per_class_macro_and_weighted_averages_with_names(self):
        labels = [0, 0, 0, 0, 1, 2]  # supports 4, 1, 1
        preds = [0, 0, 1, 2, 1, 1]
        m = classification_metrics(preds, labels, num_labels=3, label_names=["billing", "shipping", "returns"])
        self.assertEqual(list(m["per_class"]), ["billing", "shipping", "returns"])
        billing, shipping, returns = m["per_class"].values()
        self.assertEqual((billing["precision"], billing["recall"], billing["support"]), (1.0, 0.5, 4))
        self.assertAlmostEqual(shipping["precision"], 1 / 3)
        self.assertEqual((shipping["recall"], returns["f1"], returns["support"]), (1.0, 0.0, 1))
        f1s = [2 / 3, 0.5, 0.0]
        self.assertAlmostEqual(m["macro_f1"], sum(f1s) / 3)
        self.assertAlmostEqual(m["f1"], m["macro_f1"])  # more than two classes: the headline F1 is the macro one
        self.assertAlmostEqual(m["weighted_f1"], (4 * f1s[0] + f1s[1] + f1s[2]) / 6)
        self.assertAlmostEqual(m["weighted_recall"], m["accuracy"])  # support-weighted recall is accuracy
        self.assertEqual(summary_metric_names(3)[-2:], ("macro_f1", "weighted_f1"))
        table = format_per_class(m["per_class"]).splitlines()
        self.assertEqual(table[1].split(), ["billing", "1.0000", "0.5000", "0.6667", "4"])
        with self.assertRaises(ValueError):
            classification_metrics(preds, labels, num_labels=3, label_names=["a", "b"])

    def test_macro_averages_leave_out_classes_nobody_has(self):
        # Labels 1-5 leave class 0 with no examples and no predictions: perfect predictions score 1.0, not 5/6.
        m = classification_metrics([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], num_labels=6)
        self.assertEqual((m["accuracy"], m["macro_f1"], m["f1"]), (1.0, 1.0, 1.0))
        self.assertEqual(m["per_class"]["0"]["support"], 0)  # still listed
        # A class that is predicted but never true does count (its precision is 0).
        m = classification_metrics([0, 1, 2], [0, 1, 1], num_labels=3)
        self.assertAlmostEqual(m["macro_precision"], (1 + 1 + 0) / 3)

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
