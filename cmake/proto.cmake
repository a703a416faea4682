# Generated code for proto/: C (protobuf-c) into the library orthod_proto, and Python stubs
# (protoc + grpc_python_plugin) into ${ORTHOD_PYTHON_GEN} for the Python tests and client.
# Nothing generated is committed.
set(ORTHOD_PROTO_DIR ${CMAKE_SOURCE_DIR}/proto)
set(ORTHOD_PROTO_FILES orthod/v1/orthod.proto grpc/health/v1/health.proto)
set(ORTHOD_GEN_DIR ${CMAKE_BINARY_DIR}/gen)
set(ORTHOD_PYTHON_GEN ${CMAKE_BINARY_DIR}/gen/python)

set(ORTHOD_PROTO_STRIPPED ${CMAKE_BINARY_DIR}/gen/proto-messages)
set(_proto_c_sources)
set(_proto_abs)
set(_proto_stripped)
foreach(rel ${ORTHOD_PROTO_FILES})
  string(REGEX REPLACE "\\.proto$" "" stem ${rel})
  list(APPEND _proto_c_sources ${ORTHOD_GEN_DIR}/${stem}.pb-c.c)
  list(APPEND _proto_abs ${ORTHOD_PROTO_DIR}/${rel})
  list(APPEND _proto_stripped ${ORTHOD_PROTO_STRIPPED}/${rel})
  add_custom_command(
    OUTPUT ${ORTHOD_PROTO_STRIPPED}/${rel}
    COMMAND ${CMAKE_COMMAND} -DIN=${ORTHOD_PROTO_DIR}/${rel} -DOUT=${ORTHOD_PROTO_STRIPPED}/${rel}
            -P ${CMAKE_SOURCE_DIR}/cmake/strip_services.cmake
    DEPENDS ${ORTHOD_PROTO_DIR}/${rel} ${CMAKE_SOURCE_DIR}/cmake/strip_services.cmake
    VERBATIM)
endforeach()
set(_proto_c_headers ${_proto_c_sources})
list(TRANSFORM _proto_c_headers REPLACE "\\.c$" ".h")

add_custom_command(
  OUTPUT ${_proto_c_sources} ${_proto_c_headers}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${ORTHOD_GEN_DIR}
  COMMAND ${PROTOC_C} --c_out=${ORTHOD_GEN_DIR} -I${ORTHOD_PROTO_STRIPPED} ${ORTHOD_PROTO_FILES}
  DEPENDS ${_proto_stripped}
  COMMENT "protoc-c: generating C code for the protocol"
  VERBATIM)

add_library(orthod_proto STATIC ${_proto_c_sources})
target_include_directories(orthod_proto PUBLIC ${ORTHOD_GEN_DIR})
target_link_libraries(orthod_proto PUBLIC PkgConfig::PROTOBUF_C)
# Generated code is not ours to warn about.
target_compile_options(orthod_proto PRIVATE -w)

if(PROTOC AND GRPC_PYTHON_PLUGIN)
  set(ORTHOD_PYTHON_STUBS)
  foreach(rel ${ORTHOD_PROTO_FILES})
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    list(APPEND ORTHOD_PYTHON_STUBS ${ORTHOD_PYTHON_GEN}/${stem}_pb2.py
                                    ${ORTHOD_PYTHON_GEN}/${stem}_pb2_grpc.py)
  endforeach()
  add_custom_command(
    OUTPUT ${ORTHOD_PYTHON_STUBS}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${ORTHOD_PYTHON_GEN}
    COMMAND ${PROTOC} -I${ORTHOD_PROTO_DIR} --python_out=${ORTHOD_PYTHON_GEN}
            --grpc_python_out=${ORTHOD_PYTHON_GEN}
            --plugin=protoc-gen-grpc_python=${GRPC_PYTHON_PLUGIN} ${ORTHOD_PROTO_FILES}
    DEPENDS ${_proto_abs}
    COMMENT "protoc: generating Python stubs for the protocol"
    VERBATIM)
  add_custom_target(orthod_python_stubs ALL DEPENDS ${ORTHOD_PYTHON_STUBS})
endif()
