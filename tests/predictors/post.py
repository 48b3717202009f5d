class Predictor:
    def __init__(self, config):
        self.log = config["log_file"]

    def predict(self, payload):
        return {"ok": True}

    def post_predict(self, response, payload, status_code):
        with open(self.log, "a") as f:
            f.write(f"{status_code} {payload['id']} {response}\n")
