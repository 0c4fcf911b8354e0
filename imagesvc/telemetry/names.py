"""Every metric name, in one place. Prometheus names follow go-grpc-prometheus for the RPC layer
(so stock dashboards work) and ``imagesvc_*`` with base units for the rest. DogStatsD names are
the dotted equivalents under the configured namespace."""

GRPC_SERVER_STARTED = "grpc_server_started_total"
GRPC_SERVER_HANDLED = "grpc_server_handled_total"
GRPC_SERVER_HANDLING_SECONDS = "grpc_server_handling_seconds"

STEP_DURATION = "imagesvc_pipeline_step_duration_seconds"
INFERENCE_DURATION = "imagesvc_inference_request_duration_seconds"
ERRORS = "imagesvc_errors_total"
DEGRADATIONS = "imagesvc_degradations_total"
IMAGES_IN_PROGRESS = "imagesvc_images_in_progress"
QUEUE_DEPTH = "imagesvc_queue_depth"
WORKERS = "imagesvc_workers"
INPUT_BYTES = "imagesvc_input_image_bytes"
OUTPUT_BYTES = "imagesvc_output_image_bytes"
TRITON_READY = "imagesvc_triton_ready"
BUILD_INFO = "imagesvc_build_info"

# DogStatsD (dotted, namespace prefixed by the client)
DD_RPC_DURATION = "rpc.duration"
DD_RPC_HANDLED = "rpc.handled"
DD_STEP_DURATION = "pipeline.step.duration"
DD_INFERENCE_DURATION = "inference.duration"
DD_ERRORS = "errors"
DD_DEGRADATIONS = "degradations"
DD_IMAGES_IN_PROGRESS = "images_in_progress"
DD_TRITON_READY = "triton.ready"
