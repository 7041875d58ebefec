-- One database per service (the image creates POSTGRES_DB = auth).
CREATE DATABASE posts;
