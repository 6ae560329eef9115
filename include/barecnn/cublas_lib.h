// The cuBLAS calls barecnn makes, through one door. A CUDA build does not link libcublas: the
// first call opens it (dlopen), so a process that never uses the GPU does not pay for loading it.
// With CUDA 13.0 that is ~0.4 s of libcublasLt's static initializers at every start, measured on
// an empty program linked against cublas; `barecnn --version`, a CPU training run and each test
// process paid it. The emulator build (tests/emu) calls the emulator's cuBLAS directly.
// Same arguments and results as the cuBLAS function named in each comment.
#pragma once

#include <cublas_v2.h>

#include <string>

namespace barecnn::cublas {

cublasStatus_t create(cublasHandle_t* handle);                                 // cublasCreate
cublasStatus_t destroy(cublasHandle_t handle);                                 // cublasDestroy
cublasStatus_t set_stream(cublasHandle_t handle, cudaStream_t stream);         // cublasSetStream
cublasStatus_t set_math_mode(cublasHandle_t handle, cublasMath_t mode);        // cublasSetMathMode
cublasStatus_t set_workspace(cublasHandle_t handle, void* ptr, size_t bytes);  // cublasSetWorkspace
cublasStatus_t sgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                     const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta, float* C,
                     int ldc);  // cublasSgemm

// Opens cuBLAS now if no call has yet, and says where from ("the emulator" in the emulator build).
// Throws barecnn::Error naming the library and dlerror()'s reason when it cannot be opened or
// lacks one of the functions above; every call above throws the same.
std::string library();

// Whether this process has opened cuBLAS (always true in the emulator build).
bool loaded();

}  // namespace barecnn::cublas
