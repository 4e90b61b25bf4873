"""Helper for python_provider_test.sh: reports what the wrapper and the py_binary launcher set up."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "print-env":
        print(f"executable={sys.executable}")
        print(f"main={Path(__file__).resolve()}")
        print(f"output_dir={os.environ.get('CPU_FINETUNE_OUTPUT_DIR', '')}")
        print(f"hf_home={os.environ.get('HF_HOME', '')}")
    elif command == "echo":
        print("\n".join(args))
    elif command == "exit":
        sys.exit(int(args[0]))
