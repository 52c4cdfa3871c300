//! Generated protobuf and tonic code, and the descriptor set for reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Protos of the Feishu APIs the gateway exposes, by Feishu package.
pub mod feishu {
    pub mod corehr {
        pub mod v2 {
            tonic::include_proto!("feishu.corehr.v2");
        }
    }
    pub mod hire {
        pub mod v1 {
            tonic::include_proto!("feishu.hire.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of every proto above, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("feishu_gateway_descriptor");

/// The same protos without source info (comments): what the route catalog
/// reads at start-up.
pub const ROUTES_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("feishu_gateway_routes");
