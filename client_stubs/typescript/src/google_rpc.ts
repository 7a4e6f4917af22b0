// The google.rpc messages a failure carries: Status and its details (ErrorInfo, BadRequest,
// RetryInfo, QuotaFailure, PreconditionFailure, ResourceInfo, RequestInfo, ...). Read them with
// ConnectError.findDetails(ErrorInfoSchema).
export * from "./gen/google/rpc/code_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
export * from "./gen/google/rpc/status_pb.js";
