class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload, request_body):
        return payload
