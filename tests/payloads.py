"""API answers shared by the tests of normalisation and of the store."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)

DONE: dict[str, Any] = {
    "taskId": "task-done00000001",
    "jobId": "job-a",
    "jobName": "客服问答-1",
    "jobDescription": "",
    "model": "ERNIE-Speed-8K",
    "trainMode": "SFT",
    "parameterScale": "LoRA",
    "runStatus": "Done",
    "vdlLink": "https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=abc",
    "createDate": "2024-01-30T09:41:54Z",
    "finishDate": "2024-01-30T10:12:00Z",
    "metrics": {
        "BLEU-4": "58.62%",
        "ROUGE-1": "68.1%",
        "ROUGE-2": "40%",
        "ROUGE-L": "61.25%",
        "EDIT-DISTANCE": "43.07",
        "EMBEDDING-DISTANCE": "0.03",
    },
    "checkpointList": [
        {"step": 128, "perplexity": 1.21, "trainingLoss": 0.19},
        {"step": 64, "perplexity": 1.2891639471054077, "trainingLoss": 0.2539938688278198},
    ],
    "somethingNew": {"nested": [1, 2]},
}
