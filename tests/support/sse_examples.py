"""Scripted SSE streams the fake upstream does not produce by itself."""

# The fake does not stream /images/generations: script the stream the spec documents
# (openapi.yaml, createImage x-oaiMeta example): partial images, then `completed`, no [DONE].
_IMAGE_FIELDS = (
    '"b64_json":"aGVsbG8=","created_at":1713833628,"size":"1024x1024","quality":"low",'
    '"background":"opaque","output_format":"png"'
)
IMAGE_SSE = (
    "event: image_generation.partial_image\n"
    f'data: {{"type":"image_generation.partial_image",{_IMAGE_FIELDS},"partial_image_index":0}}\n\n'
    "event: image_generation.completed\n"
    f'data: {{"type":"image_generation.completed",{_IMAGE_FIELDS},"usage":{{"total_tokens":100,'
    '"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40}}}\n\n'
)
