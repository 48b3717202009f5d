class Model:
    def predict(self, payload):
        return payload
