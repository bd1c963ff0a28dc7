"""Prediction: tile reading (numpy), the model runner (torch), and the Ray orchestration on top."""
