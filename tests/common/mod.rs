#![allow(dead_code)]

pub mod http_server;
