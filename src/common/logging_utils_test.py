"""The console filter, the run log file and the LOAD REPORT parsing of logging_utils."""

import io
import logging
import shutil
import tempfile
import unittest
from pathlib import Path

from transformers.utils.loading_report import LoadStateDictInfo

from src.common import logging_utils
from src.common.logging_utils import (
    FILE_ONLY,
    LOAD_REPORT_LOGGER,
    ConsoleFilter,
    RunLog,
    held_load_reports,
    load_report_rows,
)


def record(name: str, level: int, message: str = "m", **extra) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def load_report(**keys) -> str:
    """A LOAD REPORT message as transformers 5 logs it (utils/loading_report.py), from the library's own code."""
    info = LoadStateDictInfo(
        missing_keys=set(keys.get("missing", ())),
        unexpected_keys=set(keys.get("unexpected", ())),
        mismatched_keys=set(keys.get("mismatched", ())),
        error_msgs=[],
        conversion_errors={},
        skipped_pp_keys=set(),
    )
    return f"\x1b[1mBertForSequenceClassification {logging_utils.LOAD_REPORT_MARK}\x1b[0m from: x\n" + (
        info.create_loading_report()
    )


class ConsoleFilterTest(unittest.TestCase):
    def test_own_records_from_the_level_up_library_records_from_warning_up(self):
        at_info = ConsoleFilter(logging.INFO)
        self.assertTrue(at_info.filter(record("src.training.x", logging.INFO)))
        self.assertTrue(at_info.filter(record("__main__", logging.INFO)))
        self.assertFalse(at_info.filter(record("src.training.x", logging.DEBUG)))
        self.assertFalse(at_info.filter(record("transformers.trainer", logging.INFO)))
        self.assertTrue(at_info.filter(record("transformers.trainer", logging.WARNING)))
        self.assertFalse(at_info.filter(record("src.x", logging.WARNING, **{FILE_ONLY: True})))
        at_warning = ConsoleFilter(logging.WARNING)
        self.assertFalse(at_warning.filter(record("src.training.x", logging.INFO)))
        self.assertTrue(at_warning.filter(record("src.training.x", logging.WARNING)))
        self.assertFalse(ConsoleFilter(logging.ERROR).filter(record("transformers.x", logging.WARNING)))


class RunLogTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        root = logging.getLogger()
        self.addCleanup(root.setLevel, root.level)
        root.setLevel(logging.INFO)
        self.logger = logging.getLogger("src.common.logging_utils_test")

    def test_records_are_held_until_open_and_runs_append(self):
        path = self.dir / "out" / "train.log"
        with RunLog(path, "job --flag 1") as run_log:
            self.logger.info("before open")
            self.assertFalse(path.parent.exists())  # bad input found now would leave no trace
            run_log.open()
            self.logger.info("after open")
        self.logger.info("after close")
        with RunLog(path, "job --flag 2") as run_log:
            run_log.open()
            self.logger.info("second run")
        text = path.read_text()
        self.assertEqual(text.count("===== "), 2)
        self.assertLess(text.index("job --flag 1"), text.index("before open"))
        self.assertLess(text.index("before open"), text.index("after open"))
        self.assertLess(text.index("after open"), text.index("job --flag 2"))
        self.assertIn("INFO src.common.logging_utils_test: second run", text)
        self.assertNotIn("after close", text)

    def test_a_run_that_never_opens_writes_nothing(self):
        path = self.dir / "train.log"
        with self.assertRaises(ValueError), RunLog(path, "job"):
            self.logger.info("setup")
            raise ValueError("bad input")
        self.assertFalse(path.exists())

    def test_an_exception_after_open_is_recorded_with_its_traceback(self):
        path = self.dir / "train.log"
        with self.assertRaises(RuntimeError), RunLog(path, "job") as run_log:
            run_log.open()
            raise RuntimeError("boom")
        text = path.read_text()
        self.assertIn("run ended by RuntimeError", text)
        self.assertIn("Traceback", text)


class LoadReportTest(unittest.TestCase):
    def test_rows_of_the_librarys_table(self):
        message = load_report(missing=["classifier.weight", "classifier.bias"], unexpected=["pooler.dense.weight"])
        rows = load_report_rows(record(LOAD_REPORT_LOGGER, logging.WARNING, message))
        self.assertEqual(
            sorted(rows),
            [("classifier.bias", "MISSING"), ("classifier.weight", "MISSING"), ("pooler.dense.weight", "UNEXPECTED")],
        )

    def test_reports_are_held_then_passed_on(self):
        emitter = logging.getLogger(LOAD_REPORT_LOGGER)
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        emitter.addHandler(handler)
        self.addCleanup(emitter.removeHandler, handler)
        self.addCleanup(setattr, emitter, "propagate", emitter.propagate)
        emitter.propagate = False  # only to this test's handler
        with held_load_reports() as held:
            emitter.warning(load_report(missing=["classifier.bias"]))
            emitter.warning("another warning")
        self.assertEqual(len(held), 1)
        self.assertEqual(stream.getvalue(), "another warning\n")
        logging_utils.pass_on(held[0])
        self.assertIn("classifier.bias", stream.getvalue())
        with self.assertRaises(OSError), held_load_reports():  # a failed load shows its report at once
            emitter.warning(load_report(missing=["bert.pooler.dense.bias"]))
            raise OSError("no weights")
        self.assertIn("bert.pooler.dense.bias", stream.getvalue())


if __name__ == "__main__":
    unittest.main()
