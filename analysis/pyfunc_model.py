"""The exported classifier as an MLflow pyfunc, logged as "models from code" (nothing pickled).

MLflow runs this file when the model is loaded (`mlflow.pyfunc.load_model`); the model's
only artifact is the export folder that `analysis.best` wrote. It needs this project
(`trainable`, `analysis`) importable where it is loaded.

Input: raw clauses (a list of strings, or a DataFrame with a `text` column); they are
normalized the way the training data was. Output: a DataFrame with `probability` (of
unfair) and `unfair` (probability >= the threshold chosen on validation).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

EXPORT_ARTIFACT = "export"


class UnfairClauseClassifier(PythonModel):
    """Scores Terms of Service clauses with the exported QLoRA adapter."""

    def load_context(self, context: Any) -> None:
        """Load the export folder (adapter, tokenizer, trial config, threshold)."""
        from analysis.export import read_threshold
        from trainable.inference import inference_precision, load_trained

        folder = context.artifacts[EXPORT_ARTIFACT]
        self.model, self.tokenizer, self.cfg = load_trained(folder)
        device = next(self.model.parameters()).device.type
        self.precision = inference_precision(self.cfg, device)
        self.threshold = read_threshold(folder)

    # No type hints here: MLflow would try to derive a schema from them and warn.
    def predict(self, context, model_input, params=None):  # noqa: ANN001
        """P(unfair) and the decision for each raw clause."""
        import pandas as pd

        from trainable.inference import predict_proba
        from trainable.text import normalize

        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text" if "text" in model_input else model_input.columns[0]]
        else:
            texts = model_input
        texts = [str(t) for t in list(texts)]
        threshold = float((params or {}).get("threshold", self.threshold))
        probs = predict_proba(self.model, self.tokenizer, [normalize(t) for t in texts],
                              self.cfg.max_length, precision=self.precision)
        return pd.DataFrame({"probability": probs, "unfair": probs >= threshold})


# "Models from code": MLflow executes this file and takes the model it names here.
mlflow.models.set_model(UnfairClauseClassifier())
